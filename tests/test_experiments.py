"""The ablation campaign on tiny data: every run trains, is evaluated, recorded, skipped when done."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import ablations
from instdisc.config import embed_size
from instdisc.data import load_splits
from instdisc.embed import embed
from instdisc.runtime import use_bf16
from instdisc.trained import Checkpoint


def _weighted_knn(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray, k: int, temperature: float,
                  classes: int) -> np.ndarray:
    """Each query's class by the weighted vote of its k most similar gallery rows, weight exp(cosine / T)
    (ties to the lower class)."""
    sims = queries @ gallery.T
    near = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(queries), classes))
    for i, row in enumerate(near):
        np.add.at(votes[i], labels[row], np.exp(sims[i, row] / temperature))
    return votes.argmax(1)


def test_ablation_group_runs_records_and_skips(shapes_root: Path, tmp_path: Path) -> None:
    args = ["--data", str(shapes_root), "--groups", "momentum", "--epochs", "1",
            "--runs-dir", str(tmp_path / "runs"), "--results", str(tmp_path / "res")]
    assert ablations.main(args) == 0
    summary = json.loads((tmp_path / "res" / "ablations.json").read_text())
    rows = summary["groups"]["momentum"]["rows"]
    assert [r["value"] for r in rows] == [0.0, 0.5, 0.9]
    assert summary["groups"]["momentum"]["complete"]
    # every accuracy recomputed from the run's checkpoint: its encoder re-embeds the test queries and the
    # training images, its memory bank is the other gallery, and the weighted vote (k = 200,
    # exp(similarity / 0.1)) and 1-NN are counted here
    train, test = load_splits(shapes_root, 32, progress=False)
    for r in rows:
        ck = Checkpoint.load(tmp_path / "runs" / r["run"] / "checkpoint.pt")
        bf16 = use_bf16(torch.device("cpu"), ck.config.precision)
        side = embed_size(ck.config)
        enc = ck.encoder()
        q = embed(enc, test.at_eval_size(side).images, bf16=bf16).double().numpy()
        full = embed(enc, train.at_eval_size(side).images, bf16=bf16).double().numpy()
        for gallery, name in ((ck.bank().double().numpy(), "bank"), (full, "full")):
            want = {"knn": _weighted_knn(q, gallery, train.labels.numpy(), 200, 0.1, 4),
                    "nn1": _weighted_knn(q, gallery, train.labels.numpy(), 1, 0.1, 4)}
            for metric, pred in want.items():
                accuracy = 100 * np.mean(pred == test.labels.numpy())
                assert r[f"{metric}_{name}"] == round(accuracy, 2), (r["run"], metric, name)
    assert (tmp_path / "res" / "ablations.png").stat().st_size > 0
    table = (tmp_path / "res" / "ablations.md").read_text()
    assert "| bankm0.9 | 0.9 |" in table and "**momentum** (`memory_momentum`)\n" in table
    assert "**tau** (`temperature`) — incomplete" in table  # only the shared baseline of that group ran
    run = json.loads((tmp_path / "res" / "runs" / "bankm0.json").read_text())
    assert run["config"]["memory_momentum"] == 0.0 and run["config"]["epochs"] == 1
    # a second call finds every run done and trains nothing
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "res" / "runs").iterdir()}
    assert ablations.main(args) == 0
    assert stamp == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "res" / "runs").iterdir()}


def test_subset_run_trains_on_the_fraction_and_evaluates_on_everything(shapes_root: Path, tmp_path: Path) -> None:
    from instdisc.data import load_splits

    full, test = load_splits(shapes_root, 32, progress=False)
    res = ablations.run_one(ablations.Run("half", {"subset": 0.5}), 1, full, test, tmp_path / "runs",
                            tmp_path / "res", progress=False)
    assert res["train_images"] == len(full) // 2
    assert res["config"]["subset"] == 0.5


def test_objective_ordering_checks_table_1() -> None:
    def rows(**acc: float) -> list[dict]:
        return [{"run": k.replace("_", "-"), "knn_bank": v} for k, v in acc.items()]

    paper_like = rows(parametric=63.0, nce_m1=42.5, nce_m10=60.0, nce_m512=78.0, nce_m4096=80.4, softmax=80.8)
    assert all(ablations.objective_ordering(paper_like).values())
    swapped = rows(parametric=81.0, nce_m1=42.5, nce_m10=79.0, nce_m512=78.0, nce_m4096=80.4, softmax=80.8)
    checks = ablations.objective_ordering(swapped)
    assert checks == {"nce_m1_lowest": True, "softmax_highest": False, "nce_improves_with_m": False,
                      "parametric_below_softmax_and_nce4096": False}
    assert ablations.objective_ordering(rows(softmax=80.8)) == {}
    zema = rows(parametric=63.0, nce_m1_zema=42.5, nce_m10_zema=60.0, nce_m512_zema=78.0, nce_m4096_zema=80.4,
                softmax=80.8)
    assert all(ablations.objective_ordering(zema, "-zema").values())


def test_claims_are_exclusive_and_a_dead_workers_claim_is_void(tmp_path: Path) -> None:
    assert ablations.claim(tmp_path, "a")
    assert ablations.claim(tmp_path, "a")  # this process already holds it
    (tmp_path / "b.claim").write_text("1")  # held by a live process (init) that is not us
    assert not ablations.claim(tmp_path, "b")
    (tmp_path / "c.claim").write_text("999999999")  # no such process: the claim is stale
    assert ablations.claim(tmp_path, "c")
    assert (tmp_path / "c.claim").read_text() == str(__import__("os").getpid())


def test_fill_report_replaces_only_the_marked_block(tmp_path: Path) -> None:
    report = tmp_path / "R.md"
    report.write_text("# title\n<!-- ablations -->\nold table\n<!-- /ablations -->\nprose stays\n")
    ablations.fill_report(report, "| new | table |")
    assert report.read_text() == "# title\n<!-- ablations -->\n| new | table |\n<!-- /ablations -->\nprose stays\n"
    (tmp_path / "bare.md").write_text("no markers")
    with pytest.raises(SystemExit, match="markers"):
        ablations.fill_report(tmp_path / "bare.md", "x")
