"""Image collections: scan a folder or archive, decode once into memory, stable indices.

An instance's index is its position in the sorted list of relative paths, so it never
depends on file-system order, and the list is saved in every checkpoint: memory-bank row i
is always ``paths[i]``. Images are decoded once (in parallel), fitted to a square of
``image_size`` and kept as one uint8 tensor, and the decoded tensor is cached on disk keyed
by the files' names, sizes and modification times, so later runs start in seconds.

Sources: a folder (class-per-folder like ImageFolder, or any nesting without labels), a
``.tar``/``.tar.gz``/``.tgz`` archive of one (extracted once to the cache, so every index
entry points at a real file), or ``cifar10`` / ``cifar10:ROOT`` through torchvision's
download (written out as PNG folders). A folder holding ``train/`` plus ``test/`` or
``val/`` is a split collection: training reads ``train/``, evaluation the other.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .fsutil import atomic_write_bytes, atomic_write_text, sha256_file
from .images import ImageError, fit_square, is_image_name, load_image, nchw

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
EVAL_SPLITS = ("test", "val", "validation")
CACHE_VERSION = 1


class DataError(RuntimeError):
    """A data source that cannot be used; the message says what to fix."""


def cache_root() -> Path:
    return Path(os.environ.get("INSTDISC_CACHE", Path.home() / ".cache" / "instdisc"))


@dataclass
class ImageCollection:
    """Decoded images of one split with stable indices; labels are -1 where unknown."""

    root: str
    paths: list[str]
    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_labels(self) -> bool:
        return bool(self.classes) and bool((self.labels >= 0).all())

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, idx: torch.Tensor | list[int]) -> ImageCollection:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ImageCollection(
            self.root, [self.paths[i] for i in idx.tolist()], self.images[idx], self.labels[idx], self.classes
        )

    def meta(self) -> dict:
        """What a checkpoint stores to map bank rows back to files (no pixels)."""
        return {"root": self.root, "paths": self.paths, "labels": self.labels.tolist(), "classes": self.classes,
                "image_size": self.image_size}


# ---------------------------------------------------------------- sources


def extract_archive(archive: Path, dest_parent: Path | None = None) -> Path:
    """Extract once into the cache (keyed by the archive's hash); return the folder."""
    digest = sha256_file(archive)[:16]
    dest = (dest_parent or cache_root() / "extracted") / f"{archive.name.split('.')[0]}-{digest}"
    if (dest / ".complete").exists():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
            tar.extractall(tmp, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{archive}: cannot extract archive ({e})") from e
    (tmp / ".complete").write_text(str(archive))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def _download_cifar10(root: Path) -> Path:
    """torchvision's CIFAR-10 download, written out as train/ and test/ PNG folders."""
    import torchvision
    from PIL import Image

    out = root / "cifar10-png"
    if (out / ".complete").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    for split, train in (("train", True), ("test", False)):
        ds = torchvision.datasets.CIFAR10(str(root), train=train, download=True)
        counts: dict[int, int] = {}
        for arr, y in zip(ds.data, ds.targets, strict=True):
            d = tmp / split / ds.classes[y]
            d.mkdir(parents=True, exist_ok=True)
            n = counts[y] = counts.get(y, -1) + 1
            Image.fromarray(arr).save(d / f"{n:04d}.png")
    (tmp / ".complete").write_text("cifar10")
    os.replace(tmp, out)
    return out


def resolve_source(source: str | os.PathLike) -> Path:
    """A folder to read from: the folder itself, an extracted archive, or downloaded CIFAR-10."""
    s = str(source)
    if s == "cifar10" or s.startswith("cifar10:"):
        root = Path(s.split(":", 1)[1]) if ":" in s else cache_root() / "torchvision"
        return _download_cifar10(root)
    p = Path(s).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_file():
        if not s.lower().endswith(ARCHIVE_SUFFIXES):
            raise DataError(f"{p}: expected a folder of images or a .tar/.tar.gz archive")
        p = extract_archive(p)
    return p


def split_dirs(root: Path) -> tuple[Path, Path | None]:
    """(training folder, evaluation folder or None) of a collection root.

    An archive with one top folder (``cifar10/train/...``) is looked into.
    """
    entries = [e for e in root.iterdir() if not e.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and not (root / "train").is_dir():
        return split_dirs(entries[0])
    if (root / "train").is_dir():
        for name in EVAL_SPLITS:
            if (root / name).is_dir():
                return root / "train", root / name
        return root / "train", None
    return root, None


# ---------------------------------------------------------------- scanning and decoding


def scan(root: Path) -> list[str]:
    """Sorted relative POSIX paths of every image file under ``root``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if is_image_name(f) and not f.startswith("."):
                found.append(Path(dirpath, f).relative_to(root).as_posix())
    return sorted(found)


def infer_labels(paths: list[str], mode: str = "auto") -> tuple[torch.Tensor, list[str]]:
    """Class-per-folder labels from the first path component.

    ``auto`` uses them when every image sits in a first-level folder and there are at least
    two such folders; ``folders`` insists; ``none`` leaves the collection unlabelled.
    """
    if mode not in ("auto", "folders", "none"):
        raise ValueError(f"labels must be auto, folders or none, got {mode!r}")
    tops = [p.split("/", 1)[0] if "/" in p else None for p in paths]
    usable = all(t is not None for t in tops) and len(set(tops)) >= 2
    if mode == "none" or (mode == "auto" and not usable):
        return torch.full((len(paths),), -1, dtype=torch.long), []
    if not usable:
        raise DataError("labels=folders needs every image inside one of at least two class folders")
    classes = sorted(set(tops))  # type: ignore[arg-type]
    lookup = {c: i for i, c in enumerate(classes)}
    return torch.tensor([lookup[t] for t in tops], dtype=torch.long), classes


def _decode(path: Path, size: int) -> np.ndarray | str:
    try:
        return fit_square(load_image(path), size)
    except ImageError as e:
        return str(e)


def _cache_key(root: Path, paths: list[str], size: int) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{root.resolve()}|{size}".encode())
    for p in paths:
        st = (root / p).stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def decode_all(
    root: Path, paths: list[str], size: int, workers: int | None = None, progress: bool = True
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Decode in parallel; return (images of the readable files, their paths, skipped)."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    skipped = []
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        results = pool.map(lambda p: _decode(root / p, size), paths, chunksize=64)
        for i, r in enumerate(tqdm(results, total=len(paths), desc=f"decode {root.name}", disable=not progress,
                                   unit="img", leave=False)):
            if isinstance(r, str):
                skipped.append((paths[i], r))
            else:
                out[i] = r
                ok[i] = True
    return out[ok], [p for p, k in zip(paths, ok, strict=True) if k], skipped


def _read_cache(npy: Path, meta: Path) -> tuple[np.ndarray, list[str], list[tuple[str, str]]] | None:
    """A previous decode of the same files, or None when absent or unusable (then it is rewritten)."""
    try:
        info = json.loads(meta.read_text())
        arr = np.load(npy, mmap_mode="r")
        if arr.shape[0] != len(info["paths"]):
            return None
        return np.array(arr), info["paths"], [tuple(s) for s in info["skipped"]]
    except (ValueError, OSError, KeyError, json.JSONDecodeError):
        return None


def load_folder(
    root: Path, image_size: int, labels: str = "auto", strict: bool = False, use_cache: bool = True,
    progress: bool = True,
) -> ImageCollection:
    root = root.resolve()
    paths = scan(root)
    if not paths:
        raise DataError(f"{root}: no image files found (looked for {', '.join(('.jpg', '.png', '...'))})")
    cache_dir = cache_root() / "decoded"
    key = _cache_key(root, paths, image_size) if use_cache else ""
    npy, meta = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    cached = _read_cache(npy, meta) if use_cache else None
    if cached is not None:
        arr, kept, skipped = cached
    else:
        arr, kept, skipped = decode_all(root, paths, image_size, progress=progress)
        if use_cache:
            buf = io.BytesIO()
            np.save(buf, arr)
            atomic_write_bytes(npy, buf.getvalue())
            atomic_write_text(meta, json.dumps({"paths": kept, "skipped": skipped}))
    if skipped:
        listing = "\n".join(f"  {p}: {why}" for p, why in skipped[:50])
        more = f"\n  ... and {len(skipped) - 50} more" if len(skipped) > 50 else ""
        if strict:
            raise DataError(f"{len(skipped)} unreadable image file(s) under {root}:\n{listing}{more}")
        warnings.warn(f"skipped {len(skipped)} unreadable image file(s) under {root}:\n{listing}{more}",
                      stacklevel=2)
    if not kept:
        raise DataError(f"{root}: none of the {len(paths)} image files could be decoded")
    y, classes = infer_labels(kept, labels)
    images = nchw(arr)
    return ImageCollection(str(root), kept, images, y, classes, skipped)


def load_splits(
    source: str | os.PathLike, image_size: int, labels: str = "auto", strict: bool = False, progress: bool = True
) -> tuple[ImageCollection, ImageCollection | None]:
    """(training collection, evaluation collection or None) from any supported source.

    The evaluation split reuses the training split's class list so label ids agree.
    """
    train_dir, eval_dir = split_dirs(resolve_source(source))
    train = load_folder(train_dir, image_size, labels, strict, progress=progress)
    if eval_dir is None:
        return train, None
    ev = load_folder(eval_dir, image_size, labels, strict, progress=progress)
    return train, align_classes(ev, train.classes)


def random_subset(coll: ImageCollection, fraction: float, seed: int = 0) -> ImageCollection:
    """A seeded random ``fraction`` of ``coll`` in its original order (the data-size ablation).

    The same (fraction, seed) always picks the same files, so a subset run can be resumed.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"subset fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return coll
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(coll), generator=g)[: max(2, int(len(coll) * fraction))].sort().values
    return coll.subset(keep)


def align_classes(coll: ImageCollection, classes: list[str]) -> ImageCollection:
    """Re-express ``coll``'s labels in another class list (unknown classes become -1)."""
    if not coll.classes or coll.classes == classes:
        return coll
    lookup = {c: i for i, c in enumerate(classes)}
    remap = torch.tensor([lookup.get(c, -1) for c in coll.classes], dtype=torch.long)
    coll.labels = torch.where(coll.labels >= 0, remap[coll.labels.clamp(min=0)], coll.labels)
    coll.classes = list(classes)
    return coll
