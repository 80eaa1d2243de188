"""Which copy of a duplicate group to keep: the largest picture, then the largest file.

More pixels is more information; at equal resolution the larger file is usually the less
compressed one. Ties go to the shorter path (the copy nearer the top of the tree, not
``.../copy of copy (2).jpg``), then the lower id, so the choice is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from .collection import Collection


@dataclass
class Member:
    """One file of a group, with the suggestion for it."""

    row: int
    id: int
    path: str
    label: str | None
    split: str | None
    width: int | None
    height: int | None
    bytes: int | None
    score_to_kept: float
    action: str  # "keep" | "remove"


def keep_order_key(coll: Collection, row: int) -> tuple:
    w, h = coll.widths[row] or 0, coll.heights[row] or 0
    return (-(w * h), -(coll.file_bytes(row) or 0), len(coll.paths[row]), coll.paths[row], int(coll.ids[row]))


def suggest(coll: Collection, rows: list[int]) -> list[Member]:
    """The group's members, the one to keep first, each marked keep/remove with its score to the kept one."""
    ranked = sorted(rows, key=lambda r: keep_order_key(coll, r))
    kept = coll.vectors[ranked[0]]
    return [Member(r, int(coll.ids[r]), coll.paths[r], coll.labels[r], coll.splits[r], coll.widths[r],
                   coll.heights[r], coll.file_bytes(r), float(coll.vectors[r] @ kept), "keep" if i == 0 else "remove")
            for i, r in enumerate(ranked)]
