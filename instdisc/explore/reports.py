"""Report folders written from exploration results: what ``find_duplicates.py`` and
``explore.py clusters|map`` leave in ``--out``.

* duplicates: ``groups.json`` (every group -- exact, near, then similar shots -- largest first, with
  the thresholds and the calibration), ``duplicates.csv`` (one row per file: group, tier,
  keep/remove or review, metadata) and ``contact_sheet.png`` (the top duplicate groups, then the
  top similar-shot groups);
* clusters: ``clusters.json`` (sizes, central images, purity / NMI) and ``clusters.png``;
* map: ``map.png`` (points coloured by cluster, thumbnails at sampled points) and ``map.json``
  (every point's id, x, y, cluster and label: the data the app draws).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from instdisc.fsutil import atomic_write, atomic_write_text

from .clusters import Clustering
from .collection import Collection
from .explorer import Duplicates
from .keep import KEEP_RULE, REVIEW_REASON, Member, review, suggest
from .projection import Projection
from .sheets import SheetRow, contact_sheet, map_picture

SHEET_GROUPS = 20  # duplicate groups on the contact sheet
SHEET_SIMILAR = 10  # similar-shot groups after them
SHEET_COLUMNS = 8  # images per sheet row
CSV_COLUMNS = ("group", "tier", "action", "reason", "id", "path", "label", "split", "width", "height", "bytes",
               "modified", "score_to_kept")


def _write_png(path: Path, img) -> None:
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def group_members(coll: Collection, dup: Duplicates) -> list[list[Member]]:
    """The members of every group of ``dup.all_groups``: keep/remove for duplicates, review for similar shots."""
    owner = dup.exact.owner if dup.exact is not None else None
    return [suggest(coll, g.rows, owner) for g in dup.groups] + [review(coll, g.rows) for g in dup.similar.groups]


def duplicates_csv(dup: Duplicates, members: list[list[Member]]) -> str:
    """One row per file in a group: the group number, its tier, keep/remove with the rule that decided
    (keep.KEEP_RULE) or review (similar shots) and the file's metadata."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for gi, (g, group) in enumerate(zip(dup.all_groups, members, strict=True)):
        for m in group:
            w.writerow([gi, g.tier, m.action, m.reason, m.id, m.path, m.label or "", m.split or "", m.width or "",
                        m.height or "", m.bytes if m.bytes is not None else "", m.modified or "",
                        f"{m.score_to_kept:.4f}"])
    return buf.getvalue()


def duplicates_json(dup: Duplicates, members: list[list[Member]]) -> dict:
    sim = dup.similar
    return {
        "threshold": dup.threshold, "guard": dup.guard, "graph": dup.graph_method,
        "embedding": dup.embedding.to_dict() if dup.embedding is not None else None,
        "calibration": dup.calibration.to_dict() if dup.calibration else None,
        "pixel_check": dup.pixel.to_dict() if dup.pixel else None,
        "pixel_check_above": dup.above.to_dict() if dup.above else None,
        "expected": {"precision": dup.expected_precision, "recall": dup.expected_recall},
        "similar": {"requested": sim.requested, "threshold": sim.threshold, "guard": sim.guard,
                    "chosen_by": sim.chosen_by, "reason": REVIEW_REASON},
        "groups_found": len(dup.all_groups), "images_in_groups": dup.images_in_groups,
        "files_to_remove": sum(m.action == "remove" for ms in members for m in ms),
        "tiers": {tier: c.to_dict() for tier, c in dup.tier_counts().items()}, "keep_rule": KEEP_RULE,
        **dup.extra,
        "groups": [{"group": gi, "tier": g.tier, "size": g.size, "mean_score": g.mean_score, "min_score": g.min_score,
                    "max_score": g.max_score, "members": [{k: v for k, v in asdict(m).items() if k != "row"}
                                                          for m in ms]}
                   for gi, (g, ms) in enumerate(zip(dup.all_groups, members, strict=True))],
    }


def group_sheet(coll: Collection, members: list[list[Member]], titles: list[str]):
    rows = []
    for title, ms in zip(titles, members, strict=True):
        shown = ms[:SHEET_COLUMNS]
        rows.append(SheetRow(title, [coll.load_image(m.row) for m in shown],
                             [f"{m.action} {m.score_to_kept:.2f}" for m in shown]))
    return contact_sheet(rows)


def write_duplicates(out: str | Path, coll: Collection, dup: Duplicates) -> dict[str, Path]:
    """groups.json, duplicates.csv and contact_sheet.png in ``out``; returns their paths."""
    out = Path(out)
    members = group_members(coll, dup)
    paths = {"json": out / "groups.json", "csv": out / "duplicates.csv", "sheet": out / "contact_sheet.png"}
    _write_json(paths["json"], duplicates_json(dup, members))
    atomic_write_text(paths["csv"], duplicates_csv(dup, members))
    n_dup = len(dup.groups)
    shown = list(range(min(n_dup, SHEET_GROUPS))) + list(range(n_dup, min(len(members), n_dup + SHEET_SIMILAR)))
    titles = [f"group {i} ({dup.all_groups[i].tier}): {len(members[i])} images, mean "
              f"{dup.all_groups[i].mean_score:.3f}" for i in shown]
    top = [members[i] for i in shown]
    _write_png(paths["sheet"], group_sheet(coll, top, titles) if top else contact_sheet([]))
    return paths


def clusters_json(coll: Collection, c: Clustering) -> dict:
    d = c.to_dict()
    d["central"] = [[{"id": int(coll.ids[r]), "path": coll.paths[r], "label": coll.labels[r]} for r in rows]
                    for rows in c.central]
    return d


def write_clusters(out: str | Path, coll: Collection, c: Clustering) -> dict[str, Path]:
    """clusters.json and clusters.png (each cluster's most central images) in ``out``."""
    out = Path(out)
    paths = {"json": out / "clusters.json", "sheet": out / "clusters.png"}
    _write_json(paths["json"], clusters_json(coll, c))
    rows = []
    for i, central in enumerate(c.central):
        maj = c.majority[i] if i < len(c.majority) else None
        title = f"cluster {i}: {c.sizes[i]} images" + (f", {maj[1]:.0%} {maj[0]}" if maj else "")
        shown = central[:SHEET_COLUMNS]
        rows.append(SheetRow(title, [coll.load_image(r) for r in shown],
                             [coll.labels[r] or coll.paths[r] for r in shown]))
    _write_png(paths["sheet"], contact_sheet(rows))
    return paths


def map_points(coll: Collection, p: Projection, c: Clustering | None) -> dict:
    """Every mapped point: id, x, y, cluster (or -1), label -- the data the app's map draws."""
    rows = p.rows
    return {"method": p.method, "explained": p.explained, "seconds": p.seconds,
            "ids": coll.ids[rows].tolist(), "x": np.round(p.xy[:, 0], 5).tolist(),
            "y": np.round(p.xy[:, 1], 5).tolist(),
            "cluster": (c.assignment[rows].tolist() if c is not None else [-1] * len(rows)),
            "label": [coll.labels[r] for r in rows.tolist()]}


def write_map(out: str | Path, coll: Collection, p: Projection, c: Clustering | None) -> dict[str, Path]:
    """map.png and map.json in ``out``."""
    out = Path(out)
    paths = {"json": out / "map.json", "png": out / "map.png"}
    _write_json(paths["json"], map_points(coll, p, c))
    colour = c.assignment[p.rows] if c is not None else np.zeros(len(p.rows), np.int64)
    img, _ = map_picture(p.xy, colour, lambda i: coll.load_image(int(p.rows[i])))
    _write_png(paths["png"], img)
    return paths
