"""The JSON answers of the search APIs, shared by the Gradio endpoints (``/search``, ``/search_batch``)
and the REST API (``POST /api/search``), so both say the same thing in the same shape."""

from __future__ import annotations

from importlib import metadata

from index.search import Hit, SearchIndex
from index.store import Filters

from .queries import SearchResult


def hits_json(hits: list[Hit]) -> dict:
    """Column lists ``ids, scores, paths, labels, splits, taken, cameras`` (paths relative to the image root;
    ``taken``: date taken, ISO local time, from EXIF or else the file's time; ``cameras``: make and model).

    Columns rather than a list of hit dicts on purpose: gradio_client treats any dict with a
    ``"path"`` key in an answer as a file to download, and would fail on every hit.
    """
    return {"ids": [int(h.id) for h in hits], "scores": [round(float(h.score), 6) for h in hits],
            "paths": [h.path for h in hits], "labels": [h.label for h in hits],
            "splits": [h.split for h in hits], "taken": [h.taken for h in hits],
            "cameras": [h.camera for h in hits]}


def filters_json(f: Filters) -> dict:
    """The filters applied (None: not filtered), dates as the inclusive ISO bounds used."""
    return {"label": f.label, "folder": f.folder, "date_from": f.taken_from, "date_to": f.taken_to,
            "camera": f.camera}


def search_json(res: SearchResult) -> dict:
    """``{query, k, label, folder, date_from, date_to, camera, took_ms, ids, scores, paths, labels, splits, taken,
    cameras}`` of one search."""
    return {"query": res.query, "k": res.k, **filters_json(res.filters), "took_ms": round(res.total_ms, 2),
            **hits_json(res.hits)}


def batch_json(k: int, filters: Filters, took_ms: float, results: list[dict]) -> dict:
    """``{k, label, folder, date_from, date_to, camera, took_ms, results}``: one entry per image, in order."""
    return {"k": k, **filters_json(filters), "took_ms": round(took_ms, 2), "results": results}


def version() -> str:
    try:
        return metadata.version("instdisc-search")
    except metadata.PackageNotFoundError:  # run from a checkout that was not pip-installed
        return "unknown"


def health_json(index: SearchIndex) -> dict:
    """What ``GET /api/health`` answers: index size and type, model, code version, device."""
    m = index.manifest
    arch = m.architecture
    return {"status": "ok", "version": version(), "count": len(index), "dim": m.dim, "device": index.device,
            "index": {"type": m.index.type, "factory": m.index.factory, "params": m.index.params,
                      "recall_at_10": m.index.recall_at_10, "generation": m.generation},
            "model": {**(arch.to_dict() if arch else {}), "epochs": m.checkpoint.epoch, "knn_top1": m.knn_top1,
                      "checkpoint_sha256": m.checkpoint.sha256}}
