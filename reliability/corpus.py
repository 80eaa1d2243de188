"""The bad-input corpus: every awkward kind of file a messy photo folder or an upload can hold.

Generated, never downloaded. Each :class:`Kind` knows its file name, how to make its bytes,
whether a correct pipeline must accept it (``valid``) or refuse it, and for refusals a regex
the error message must match. ``write_corpus`` writes one file per kind next to a few
ordinary images, so a test can check that the good files are all processed and every bad
one is refused or skipped with a reason.

The decompression bomb is a hand-made PNG header claiming 50000 x 50000 pixels (a few
hundred bytes; nothing is allocated); the EXIF-rotated JPEG is 40 x 20 stored pixels with
orientation 6, so it must come out 20 x 40 with its yellow left half on top.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LARGE_SIZE = (6000, 4000)  # 24 MP: under the decoder's pixel limit and the app's 10 MB upload cap
BOMB_SIDE = 50_000
STRIP_LENGTH = 1_000_000
EXIF_TOP, EXIF_BOTTOM = (255, 255, 0), (0, 0, 255)  # colours of the EXIF-rotated JPEG once upright


@dataclass(frozen=True)
class Kind:
    """One kind of awkward input."""

    name: str
    filename: str
    make: Callable[[], bytes]
    valid: bool
    reason: str = ""  # regex an invalid file's error message must match

    @property
    def image_name(self) -> bool:
        """Whether a folder scan picks the file up at all (by extension)."""
        from instdisc.images import is_image_name

        return is_image_name(self.filename)


# ---------------------------------------------------------------- makers


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_claiming(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose header claims ``width`` x ``height`` (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + \
        chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    return _encode(_noise((64, 64), 1), "JPEG")[:400]


def sixteen_bit_png() -> bytes:
    arr = np.linspace(0, 65535, 48 * 48).reshape(48, 48).astype(np.uint16)
    return _encode(Image.fromarray(arr, mode="I;16"), "PNG")


def cmyk_jpeg() -> bytes:
    return _encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG")  # red in CMYK


def palette_alpha_png() -> bytes:
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (10, 10, 30, 30))
    return _encode(img, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated_jpeg() -> bytes:
    """40 x 20 stored, left half yellow and right half blue; orientation 6 (rotate 90 clockwise to display):
    upright it is 20 x 40, yellow on top -- also in a centre-cropped square, so every path can check it."""
    img = Image.new("RGB", (40, 20), EXIF_BOTTOM)
    img.paste(EXIF_TOP, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(img, "JPEG", exif=exif.tobytes(), quality=95)


def one_pixel_png() -> bytes:
    return _encode(Image.new("RGB", (1, 1), (200, 30, 90)), "PNG")


def thin_strip_png() -> bytes:
    """1 x 1,000,000 pixels in about 4 kB: decodable, but naive resizing needs gigabytes."""
    return _encode(Image.new("RGB", (1, STRIP_LENGTH), (30, 120, 200)), "PNG")


def large_jpeg() -> bytes:
    """A smooth 6000 x 4000 photo-like JPEG (compresses to a few MB, like a real camera picture)."""
    w, h = LARGE_SIZE
    small = np.asarray(_noise((60, 40), 7).resize((600, 400), Image.Resampling.BICUBIC), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
    ImageDraw.Draw(img).ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], outline=(255, 255, 255), width=40)
    return _encode(img, "JPEG", quality=80)


HTML = b"<!doctype html><html><body><script>alert(1)</script><img src=x onerror=alert(2)></body></html>\n"
SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
       b'<script>alert(1)</script><circle cx="32" cy="32" r="20" fill="red"/></svg>\n')

KINDS: tuple[Kind, ...] = (
    Kind("zero-byte", "empty.jpg", lambda: b"", False, r"empty file"),
    Kind("truncated jpeg", "truncated.jpg", truncated_jpeg, False, r"corrupt or truncated"),
    Kind("text named .jpg", "notes.jpg", lambda: b"shopping list: eggs, milk\n" * 20, False,
         r"not a recognised image"),
    Kind("html upload", "page.html", lambda: HTML, False, r"not a recognised image"),
    Kind("svg upload", "vector.svg", lambda: SVG, False, r"not a recognised image"),
    Kind("svg named .png", "vector-svg.png", lambda: SVG, False, r"not a recognised image"),
    Kind("png bomb 50000x50000", "bomb.png", lambda: png_claiming(BOMB_SIDE, BOMB_SIDE), False,
         r"pixel limit|decompression bomb"),
    Kind("16-bit png", "depth16.png", sixteen_bit_png, True),
    Kind("cmyk jpeg", "cmyk.jpg", cmyk_jpeg, True),
    Kind("palette png with transparency", "palette-alpha.png", palette_alpha_png, True),
    Kind("animated gif", "animated.gif", animated_gif, True),
    Kind("exif-rotated jpeg", "exif-rotated.jpg", exif_rotated_jpeg, True),
    Kind("1x1 image", "one-pixel.png", one_pixel_png, True),
    Kind("very large valid jpeg (6000x4000)", "large.jpg", large_jpeg, True),
    Kind("thin strip 1x1000000", "strip.png", thin_strip_png, True),
)
KIND_BY_FILE = {k.filename: k for k in KINDS}


def ordinary_image(i: int, size: int = 32) -> Image.Image:
    """A plain valid picture: noisy background with a filled shape, different for every ``i``."""
    rng = np.random.default_rng(1000 + i)
    arr = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    box = [cx - r, cy - r, cx + r, cy + r]
    (ImageDraw.Draw(img).ellipse if i % 2 else ImageDraw.Draw(img).rectangle)(box, fill=colour)
    return img


def write_ordinary(root: Path, n: int, folders: tuple[str, ...] = ("a", "b")) -> list[str]:
    """``n`` ordinary PNGs spread over class folders; returns their sorted relative paths."""
    rels = []
    for i in range(n):
        rel = f"{folders[i % len(folders)]}/img{i:04d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        ordinary_image(i).save(root / rel)
        rels.append(rel)
    return sorted(rels)


def write_kinds(folder: Path, kinds: tuple[Kind, ...] = KINDS) -> dict[str, Path]:
    """One file per kind in ``folder``; returns kind name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k in kinds:
        p = folder / k.filename
        p.write_bytes(k.make())
        out[k.name] = p
    return out


@dataclass
class Corpus:
    """A folder mixing ordinary images with every kind (kinds under ``odd/``)."""

    root: Path
    ordinary: list[str]
    kinds: dict[str, str]  # kind name -> relative path

    def expected_valid(self) -> list[str]:
        """Relative paths every ingesting pipeline must process, sorted."""
        return sorted(self.ordinary + [rel for name, rel in self.kinds.items() if KIND_OF[name].valid])

    def expected_skipped(self) -> list[str]:
        """Relative paths a folder scan picks up (image extension) and must skip with a reason."""
        return sorted(rel for name, rel in self.kinds.items()
                      if not KIND_OF[name].valid and KIND_OF[name].image_name)

    def expected_ignored(self) -> list[str]:
        """Relative paths a folder scan never looks at (not an image extension)."""
        return sorted(rel for name, rel in self.kinds.items() if not KIND_OF[name].image_name)


KIND_OF = {k.name: k for k in KINDS}


def write_corpus(root: Path, n_ordinary: int = 24, kinds: tuple[Kind, ...] = KINDS) -> Corpus:
    """Ordinary images in ``a/`` and ``b/`` plus every kind in ``odd/``."""
    ordinary = write_ordinary(root, n_ordinary)
    paths = write_kinds(root / "odd", kinds)
    return Corpus(root, ordinary, {name: p.relative_to(root).as_posix() for name, p in paths.items()})


def exif_upright(arr: np.ndarray, tolerance: int = 60) -> bool:
    """Whether an (H, W, 3) decode of the EXIF-rotated JPEG (whole or centre-cropped) is upright:
    yellow top rows, blue bottom rows (unrotated it would be yellow left, blue right)."""
    arr = np.asarray(arr, dtype=float)
    band = max(1, arr.shape[0] // 8)
    top, bottom = arr[:band].reshape(-1, 3).mean(0), arr[-band:].reshape(-1, 3).mean(0)
    return bool(np.abs(top - EXIF_TOP).max() < tolerance and np.abs(bottom - EXIF_BOTTOM).max() < tolerance)
