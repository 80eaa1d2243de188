"""How a collection's folder layout is read: split folders, class-per-folder labels, an archive's top folder.

Training (:mod:`instdisc.data`) and index building (:mod:`index.build`) both read folders a user
hands them; they must agree on what ``train/``, ``test/`` and a class folder mean, so these rules
are written here once:

- a folder holding ``train/`` plus ``test/`` (or ``val/`` / ``validation/``) is a split collection;
- labels come from the class folder an image sits in, only when every image sits in one and there
  are at least two classes (a single folder of holiday photos is not a one-class dataset);
- an archive usually wraps everything in one top folder (``cifar10/train/...``): that folder is
  looked into, unless it is itself a split folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import DataError

TRAIN_SPLIT = "train"
EVAL_SPLITS = ("test", "val", "validation")
SPLIT_NAMES = (TRAIN_SPLIT, *EVAL_SPLITS)
LABEL_MODES = ("auto", "folders", "none")


def visible_entries(folder: Path) -> list[Path]:
    """Entries of ``folder`` that are not hidden (``.DS_Store``, ``.complete`` markers, ...)."""
    return sorted(e for e in folder.iterdir() if not e.name.startswith("."))


def unwrap(root: Path) -> Path:
    """Descend through lone top folders (an archive's wrapper), stopping at a split folder."""
    while True:
        entries = visible_entries(root)
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].name.lower() in SPLIT_NAMES:
            return root
        root = entries[0]


def split_dirs(root: Path) -> tuple[Path, Path | None]:
    """(training folder, evaluation folder or None) of a collection root (unwrapped first)."""
    root = unwrap(root)
    if (root / TRAIN_SPLIT).is_dir():
        for name in EVAL_SPLITS:
            if (root / name).is_dir():
                return root / TRAIN_SPLIT, root / name
        return root / TRAIN_SPLIT, None
    return root, None


def class_folders(paths: list[str]) -> list[str] | None:
    """The first folder of every path when they form at least two classes, else None (unlabelled)."""
    tops = [p.split("/", 1)[0] if "/" in p else None for p in paths]
    if not tops or any(t is None for t in tops) or len(set(tops)) < 2:
        return None
    return tops  # type: ignore[return-value]


def infer_labels(paths: list[str], mode: str = "auto") -> tuple[torch.Tensor, list[str]]:
    """Class ids (-1 where unknown) and the sorted class list of one split's relative paths.

    ``auto`` labels by class folder when :func:`class_folders` finds them; ``folders`` insists
    (DataError otherwise); ``none`` leaves the collection unlabelled.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    tops = class_folders(paths) if mode != "none" else None
    if tops is None:
        if mode == "folders":
            raise DataError("labels=folders needs every image inside one of at least two class folders")
        return torch.full((len(paths),), -1, dtype=torch.long), []
    classes = sorted(set(tops))
    lookup = {c: i for i, c in enumerate(classes)}
    return torch.tensor([lookup[t] for t in tops], dtype=torch.long), classes


def labels_and_splits(paths: list[str]) -> tuple[list[str | None], list[str | None]]:
    """(label name or None, split name or None) per path of a whole collection (all splits together).

    The split is a leading train/test/val folder (when every path has one); the label is the
    class folder below it, by the same rule as :func:`infer_labels`'s ``auto``.
    """
    parts = [p.split("/", 1) for p in paths]
    if parts and all(len(x) == 2 and x[0].lower() in SPLIT_NAMES for x in parts):
        splits: list[str | None] = [x[0] for x in parts]
        inner = [x[1] for x in parts]
    else:
        splits, inner = [None] * len(paths), list(paths)
    tops = class_folders(inner)
    return (list(tops) if tops is not None else [None] * len(paths)), splits
