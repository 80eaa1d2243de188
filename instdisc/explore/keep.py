"""Which copy of a duplicate group to keep: the largest picture, then the largest file, then the oldest.

More pixels is more information; at equal resolution the larger file is usually the less
compressed one; at equal size the oldest file is most likely the original (copies are made
later). Ties go to the shorter path (the copy nearer the top of the tree, not
``.../copy of copy (2).jpg``), then the lower id, so the choice is deterministic. Each kept
file says which of these rules decided it (``duplicates.csv``'s ``reason`` column). Similar
shots (:mod:`.similar`) are not copies: every one of them is marked ``review``, none removed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from .collection import Collection

KEEP_RULE = "largest resolution, then largest file, then oldest modification time, then shorter path"
RULES = ("largest resolution", "largest file", "oldest modification time", "shorter path", "lowest id")
REVIEW = "review"  # the action of every similar shot: neither file is redundant, a person picks
REVIEW_REASON = "similar shot: review"


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
    modified: str | None  # ISO 8601 (UTC) modification time of the file
    score_to_kept: float  # similar shots: the score to the group's first member
    action: str  # "keep" | "remove" | "review" (similar shots)
    reason: str  # keep: the rule that decided; remove: "exact copy of id N" / "near-duplicate of id N"


def keep_order_key(coll: Collection, row: int) -> tuple:
    """Sort key: the file to keep sorts first (the rules of :data:`RULES`, in order)."""
    w, h = coll.widths[row] or 0, coll.heights[row] or 0
    mtime = coll.file_mtime(row)
    return (-(w * h), -(coll.file_bytes(row) or 0), mtime if mtime is not None else float("inf"),
            len(coll.paths[row]), coll.paths[row], int(coll.ids[row]))


def _deciding_rule(best: tuple, runner_up: tuple) -> str:
    """The first rule on which the kept file beats the next one."""
    keys = (best[0], best[1], best[2], (best[3], best[4]), best[5])
    other = (runner_up[0], runner_up[1], runner_up[2], (runner_up[3], runner_up[4]), runner_up[5])
    for rule, a, b in zip(RULES, keys, other, strict=True):
        if a != b:
            return rule
    return RULES[-1]


def _iso(t: float | None) -> str | None:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds") if t is not None else None


def _kind(exact_owner: np.ndarray | None, row: int, kept_row: int) -> str:
    same = exact_owner is not None and exact_owner[row] == exact_owner[kept_row]
    return "exact copy" if same else "near-duplicate"


def _member(coll: Collection, r: int, score: float, action: str, reason: str) -> Member:
    return Member(r, int(coll.ids[r]), coll.paths[r], coll.labels[r], coll.splits[r], coll.widths[r],
                  coll.heights[r], coll.file_bytes(r), _iso(coll.file_mtime(r)), score, action, reason)


def review(coll: Collection, rows: list[int]) -> list[Member]:
    """A similar-shot group's members in its order (most connected first), each to review, with its score to
    the first: the same scene shot twice is not a copy, so no file is suggested for removal."""
    first = coll.vectors[rows[0]]
    return [_member(coll, r, float(coll.vectors[r] @ first), REVIEW, REVIEW_REASON) for r in rows]


def suggest(coll: Collection, rows: list[int], exact_owner: np.ndarray | None = None) -> list[Member]:
    """The group's members, the one to keep first, each marked keep/remove with its score to the kept one;
    ``exact_owner`` (:class:`.tiers.ExactClasses`) marks the removed files that are exact copies of the kept."""
    keyed = sorted((keep_order_key(coll, r), r) for r in rows)
    kept_row = keyed[0][1]
    kept = coll.vectors[kept_row]
    why = _deciding_rule(keyed[0][0], keyed[1][0]) if len(keyed) > 1 else RULES[0]
    return [_member(coll, r, float(coll.vectors[r] @ kept), "keep" if i == 0 else "remove",
                    why if i == 0 else f"{_kind(exact_owner, r, kept_row)} of id {int(coll.ids[kept_row])}")
            for i, (_, r) in enumerate(keyed)]
