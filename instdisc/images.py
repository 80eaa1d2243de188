"""Decode one image safely into an RGB PIL image, whatever a user's folder throws at us.

Shared by training-data loading, index building and the app, so all three accept and
reject exactly the same files: EXIF orientation is applied, 16-bit, CMYK, palette, alpha
and animated images are converted, and decompression bombs are refused with a clear error.

Phone formats: HEIC/HEIF decode through the ``pillow-heif`` plug-in, registered with PIL when
this module is imported (libheif applies the file's rotation and resets the EXIF orientation
to 1, so ``exif_transpose`` leaves it upright); AVIF decodes through Pillow's own AVIF plug-in.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pillow_heif
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

pillow_heif.register_heif_opener()  # HEIC/HEIF for every PIL.Image.open of the process

PHONE_EXTENSIONS = (".heic", ".heif", ".hif", ".avif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                    *PHONE_EXTENSIONS)
MAX_PIXELS = 64_000_000  # ~8000 x 8000; beyond this PIL's bomb check refuses the file
MAX_ASPECT = 4  # fit_square crops longer strips to their centre before resizing (bounded memory)


class ImageError(ValueError):
    """A file that is not a decodable image; the message says which file and why."""


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says, read without decoding pixels (for sampling sizes and ingest reports)."""

    format: str  # PIL's name: JPEG, PNG, WEBP, GIF, TIFF, BMP, ...
    mode: str  # PIL mode of the stored pixels: RGB, L, P, RGBA, CMYK, I;16, ...
    width: int  # as displayed (EXIF rotation applied)
    height: int
    frames: int  # > 1 for animations (only the first frame is used)


def probe(path: str | os.PathLike) -> ImageInfo:
    """Header facts of an image file; :class:`ImageError` when it is not one (a cheap pre-check, not a decode)."""
    with _pil_errors(str(path), "", "unreadable header"), Image.open(path) as img:
        w, h = img.size
        if img.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF rotation by 90 degrees swaps the sides
            w, h = h, w
        return ImageInfo(str(img.format or "unknown"), img.mode, int(w), int(h),
                         int(getattr(img, "n_frames", 1) or 1))


@contextlib.contextmanager
def _pil_errors(name: str, bomb: str, broken: str) -> Iterator[None]:
    """PIL's and the OS's exceptions as :class:`ImageError` with the file's name: one translation for
    the header probe and the full decode (``bomb``/``broken`` say what each was doing)."""
    try:
        yield
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: refused as a decompression bomb{bomb} ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not a recognised image format") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name}: {broken} ({e})") from e


def _flatten_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (16-bit, CMYK, palette, alpha) -> 8-bit RGB; alpha flattened on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return _flatten_alpha(img)
    return img.convert("RGB")


def load_image(source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open, verify and normalise an image to RGB; raise :class:`ImageError` otherwise."""
    name = "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
    if not isinstance(source, bytes | bytearray):
        try:
            if os.path.getsize(source) == 0:
                raise ImageError(f"{name}: empty file")
        except OSError as e:
            raise ImageError(f"{name}: cannot read ({e.strerror or e})") from e
    elif len(source) == 0:
        raise ImageError(f"{name}: empty file")
    # No global state is touched (PIL's MAX_IMAGE_PIXELS, warning filters): this runs in decoding
    # threads, and warnings.catch_warnings() from several threads at once leaves the process's filters
    # in whatever state the last one restored. Image.open reads only the header, so checking the size
    # right after it refuses a bomb before any pixel is decoded; PIL itself refuses beyond twice its limit.
    with _pil_errors(name, f", over the {max_pixels:,}-pixel limit", "corrupt or truncated image"):
        fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else Path(source).open("rb")
        with fp, Image.open(fp) as img:
            if img.width * img.height > max_pixels:
                raise ImageError(f"{name}: refused as a decompression bomb, {img.width}x{img.height} is over the "
                                 f"{max_pixels:,}-pixel limit")
            img.seek(0)  # animated: first frame
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return to_rgb(img)


def fit_square(img: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop: (size, size, 3) uint8.

    The one aspect rule of the project -- training decode, index build, app queries and
    evaluation all call it -- so an image is never squashed and every path sees the same square.

    A very thin strip (say 1 x 1,000,000 pixels, a few hundred bytes as a PNG) would otherwise
    be resized to ``size`` x 32,000,000 first -- gigabytes for one tiny upload -- so anything
    longer than ``MAX_ASPECT`` : 1 is cut to its centre ``MAX_ASPECT`` : 1 part before resizing
    (the centre square, all that is kept, lies inside it).
    """
    w, h = img.size
    if max(w, h) > MAX_ASPECT * min(w, h):
        keep = MAX_ASPECT * min(w, h)
        if w > h:
            img = img.crop(((w - keep) // 2, 0, (w - keep) // 2 + keep, h))
        else:
            img = img.crop((0, (h - keep) // 2, w, (h - keep) // 2 + keep))
        w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


# ---------------------------------------------------------------- array layout
# Decoded images are HWC uint8 arrays (PIL's layout); the networks take NCHW tensors. These two are
# the one place that conversion is written.


def nchw(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 array -> contiguous (N, 3, H, W) uint8 tensor (the encoders' input layout)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def hwc(image: torch.Tensor) -> np.ndarray:
    """One (3, H, W) uint8 tensor -> (H, W, 3) uint8 array (for PIL and figures)."""
    return image.permute(1, 2, 0).numpy()


def resize_squares(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, S, S) float squares -> (N, C, size, size), antialiased bilinear.

    For images stored by :func:`fit_square` at a larger side (the training cache), this gives
    the square ``fit_square`` would have made at ``size`` (up to resampling), so embeddings of
    stored images match those of files decoded at ``size`` by the index and the app.
    """
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
