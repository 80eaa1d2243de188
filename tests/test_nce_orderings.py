"""The full-budget NCE orderings summary read from run metrics: numbers in, verdicts out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import nce_orderings


def _run(folder: Path, knn: list[float]) -> Path:
    folder.mkdir(parents=True)
    rows = [{"epoch": e, "knn_top1": k / 100, "knn_1nn": k / 200} for e, k in enumerate(knn)]
    rows.insert(1, {"epoch": 1, "loss": 9.0})  # a row without the monitor is skipped
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


def test_orderings_from_curves(tmp_path: Path) -> None:
    soft = _run(tmp_path / "soft", [30.0, 40.0, 60.0])
    m4096 = _run(tmp_path / "m4096", [30.0, 29.0, 58.0])
    m1 = _run(tmp_path / "m1", [30.0, 31.0, 42.0])
    out = tmp_path / "o" / "orderings.json"
    assert nce_orderings.main(["--runs", f"softmax={soft}", f"nce-m4096={m4096}", f"nce-m1={m1}",
                               "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    o = s["orderings"]
    assert o["nce4096_within_3_of_softmax"] == {"holds": True, "gap_points": 2.0}
    assert o["nce_m1_lowest"] == {"holds": True}
    assert o["nce_improves_with_m"]["holds"] and o["nce_improves_with_m"]["by_m"] == {"1": 42.0, "4096": 58.0}
    by = {r["name"]: r for r in s["runs"]}
    assert by["nce-m4096"]["lowest_knn_after_first_epoch"] == 29.0 < by["nce-m4096"]["untrained_knn"]
    assert by["softmax"]["epochs"] == [0, 1, 2] and by["softmax"]["final_nn1"] == 30.0
    assert out.with_suffix(".png").stat().st_size > 0


def test_a_gap_over_three_points_fails_and_bad_input_is_refused(tmp_path: Path) -> None:
    soft = _run(tmp_path / "soft", [30.0, 60.0])
    m4096 = _run(tmp_path / "m4096", [30.0, 55.0])
    out = tmp_path / "orderings.json"
    nce_orderings.main(["--runs", f"softmax={soft}", f"nce-m4096={m4096}", "--out", str(out)])
    assert json.loads(out.read_text())["orderings"]["nce4096_within_3_of_softmax"] == {"holds": False,
                                                                                     "gap_points": 5.0}
    with pytest.raises(SystemExit):
        nce_orderings.main(["--runs", str(soft), "--out", str(out)])
    with pytest.raises(SystemExit):
        nce_orderings.main(["--runs", f"softmax={tmp_path / 'missing'}", "--out", str(out)])
