"""Image collections: scan a folder or archive, decode once into a disk cache, stable indices.

An instance's index is its position in the sorted list of relative paths, so it never
depends on file-system order, and the list is saved in every checkpoint: memory-bank row i
is always ``paths[i]``. Images are decoded once (in parallel) into a memory-mapped cache
(:mod:`instdisc.imagecache`), keyed by the files' names, sizes and modification times, so
later runs start in seconds and a collection larger than RAM streams from disk.

Sources: a folder (class-per-folder like ImageFolder, or any nesting without labels), a
``.tar``/``.tar.gz``/``.tgz`` archive of one (extracted once to the cache, so every index
entry points at a real file), or ``cifar10`` / ``cifar10:ROOT`` through torchvision's
download (written out as PNG folders). Split folders, labels and an archive's top folder
follow :mod:`instdisc.conventions`; what each load found is an :class:`IngestReport`.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .conventions import EVAL_SPLITS, infer_labels, split_dirs
from .errors import DataError
from .fsutil import atomic_write, atomic_write_text, sha256_file
from .imagecache import cache_key, cache_root, decode_all, mark_stored, open_cache
from .images import nchw
from .ingest import FileFacts, IngestReport, gather_facts
from .scan import scan, scan_folder

__all__ = ["EVAL_SPLITS", "DataError", "ImageCollection", "align_classes", "cache_root", "decode_all",
           "infer_labels", "load_folder", "load_splits", "random_subset", "resolve_source", "scan", "split_dirs"]

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
SKIP_LISTED = 50  # unreadable files named in the warning (the ingest report lists all)


@dataclass
class ImageCollection:
    """Decoded images of one split with stable indices; labels are -1 where unknown.

    ``images`` may be stored at another side than the one the encoder embeds at (``eval_size``):
    above it in a training cache (random crops are cut from the stored pixels, ``image_size``),
    below it when the encoder embeds whole images enlarged (``TrainConfig.embed_scale``).
    Embedding resizes to ``eval_size`` (the tensor is then an
    :class:`instdisc.imagecache.StoredImages`).
    """

    root: str
    paths: list[str]
    images: torch.Tensor  # (N, 3, S, S) uint8, S = image_size (stored side)
    labels: torch.Tensor  # (N,) int64
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    report: IngestReport | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_labels(self) -> bool:
        return bool(self.classes) and bool((self.labels >= 0).all())

    @property
    def image_size(self) -> int:
        """Side of the stored images (what random crops are cut from)."""
        return int(self.images.shape[-1])

    @property
    def eval_size(self) -> int:
        """Side the encoder embeds these images at (the index and the app embed files at it too)."""
        return int(getattr(self.images, "eval_size", self.image_size))

    def at_eval_size(self, size: int) -> ImageCollection:
        """The same images (not copied), embedded at ``size`` (the trainer's :func:`~instdisc.config.embed_size`)."""
        if size == self.eval_size:
            return self
        return replace(self, images=mark_stored(self.images, size, getattr(self.images, "guard", None)))

    def subset(self, idx: torch.Tensor | list[int]) -> ImageCollection:
        """The rows ``idx`` (their pixels copied into memory), same classes and eval size."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        images = mark_stored(self.images[idx], self.eval_size)
        return ImageCollection(
            self.root, [self.paths[i] for i in idx.tolist()], images, self.labels[idx], self.classes
        )

    def meta(self) -> dict:
        """What a checkpoint stores to map bank rows back to files (no pixels)."""
        return {"root": self.root, "paths": self.paths, "labels": self.labels.tolist(), "classes": self.classes,
                "image_size": self.eval_size}


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
        try:
            ds = torchvision.datasets.CIFAR10(str(root), train=train, download=True)
        except (OSError, RuntimeError) as e:  # no network, a proxy, a refused or truncated download
            raise DataError(f"could not download CIFAR-10 into {root} ({type(e).__name__}: {e}). Train on a "
                            "folder of your own images instead: --data FOLDER (a folder or a .tar/.tar.gz of "
                            "images), or with the quickstart: DATA=FOLDER bash scripts/quickstart.sh") from e
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


# ---------------------------------------------------------------- decoding, through the cache


def _read_cache(
    npy: Path, meta: Path, eval_size: int, max_ram: int | None
) -> tuple[torch.Tensor, list[str], list[tuple[str, str]], FileFacts | None] | None:
    """A previous decode of the same files, or None when absent or unusable (then it is rewritten)."""
    try:
        info = json.loads(meta.read_text())
        images = open_cache(npy, eval_size, max_ram)
        if images.shape[0] != len(info["paths"]):
            return None
        facts = FileFacts.from_dict(info["facts"]) if "facts" in info else None
        return images, list(info["paths"]), [(str(p), str(w)) for p, w in info["skipped"]], facts
    except (ValueError, OSError, KeyError, TypeError, json.JSONDecodeError):
        return None


def load_folder(
    root: Path, image_size: int, labels: str = "auto", strict: bool = False, use_cache: bool = True,
    progress: bool = True, store_size: int | None = None, max_ram: int | None = None,
) -> ImageCollection:
    """One split: every image under ``root`` decoded at ``store_size`` (default ``image_size``).

    ``image_size`` is the side the encoder sees; ``max_ram`` (bytes) bounds the RSS the
    memory-mapped cache may take (see :mod:`instdisc.imagecache`). Unreadable files are
    skipped with a warning (``strict``: DataError) and everything is in ``report``.
    """
    root = root.resolve()
    found = scan_folder(root)
    paths = found.paths
    if not paths:
        raise DataError(f"{root}: no image files found (looked for .jpg, .png, .webp, .tif, ...)"
                        + (f"; {len(found.refused)} links not followed" if found.refused else ""))
    store = store_size or image_size
    if store < image_size:
        raise ValueError(f"store_size {store} is below image_size {image_size}: crops would be upsampled")
    npy = meta = None
    cached = None
    if use_cache:
        key = cache_key(root, paths, store)
        npy, meta = cache_root() / "decoded" / f"{key}.npy", cache_root() / "decoded" / f"{key}.json"
        cached = _read_cache(npy, meta, image_size, max_ram)
    facts: FileFacts | None = None
    if cached is not None:
        images, kept, skipped, facts = cached
    elif npy is not None:
        decoded: list = []
        atomic_write(npy, lambda tmp: decoded.extend(decode_all(root, paths, store, progress=progress, dest=tmp)))
        _, kept, skipped = decoded
        images = open_cache(npy, image_size, max_ram)
    else:
        arr, kept, skipped = decode_all(root, paths, store, progress=progress)
        images = mark_stored(nchw(arr), image_size)
    if facts is None:  # a fresh decode, or a cache written before ingest reports existed
        facts = gather_facts(root, kept)
        if meta is not None:
            atomic_write_text(meta, json.dumps({"paths": kept, "skipped": skipped, "facts": facts.to_dict()}))
    report = IngestReport(str(root), len(paths), len(kept), store, facts, list(skipped), found.refused,
                          str(npy) if npy is not None else None, npy.stat().st_size if npy is not None else 0)
    if skipped:
        listing = "\n".join(f"  {p}: {why}" for p, why in skipped[:SKIP_LISTED])
        more = f"\n  ... and {len(skipped) - SKIP_LISTED} more" if len(skipped) > SKIP_LISTED else ""
        if strict:
            raise DataError(f"{len(skipped)} unreadable image file(s) under {root}:\n{listing}{more}")
        warnings.warn(f"skipped {len(skipped)} unreadable image file(s) under {root}:\n{listing}{more}",
                      stacklevel=2)
    if not kept:
        raise DataError(f"{root}: none of the {len(paths)} image files could be decoded")
    y, classes = infer_labels(kept, labels)
    return ImageCollection(str(root), kept, images, y, classes, list(skipped), report)

def load_splits(
    source: str | os.PathLike, image_size: int, labels: str = "auto", strict: bool = False, progress: bool = True,
    store_size: int | None = None, max_ram: int | None = None,
) -> tuple[ImageCollection, ImageCollection | None]:
    """(training collection, evaluation collection or None) from any supported source.

    Only the training split is stored at ``store_size`` (its random crops need the pixels);
    the evaluation split reuses the training split's class list so label ids agree.
    """
    train_dir, eval_dir = split_dirs(resolve_source(source))
    train = load_folder(train_dir, image_size, labels, strict, progress=progress, store_size=store_size,
                        max_ram=max_ram)
    if eval_dir is None:
        return train, None
    ev = load_folder(eval_dir, image_size, labels, strict, progress=progress, max_ram=max_ram)
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
