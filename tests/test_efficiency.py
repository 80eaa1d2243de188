"""The efficiency campaign on tiny data: time-budgeted runs are scored, recorded, skipped, summarised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments import efficiency


def test_campaign_runs_levers_under_one_budget_and_resumes(shapes_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(efficiency.DATASETS, "shapes", efficiency.Dataset("shapes", shapes_root, "tiny", 32))
    report = tmp_path / "REPORT.md"
    report.write_text("before\n<!-- efficiency:start -->\nold\n<!-- efficiency:end -->\nafter\n")
    out = tmp_path / "res"
    args = ["--dataset", "shapes", "--budgets", "4", "--variants", "plain", "two=views:2,refresh_bank:true",
            "--out", str(out), "--report", str(report)]
    assert efficiency.main(args) == 0
    runs = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert set(runs) == {"shapes-baselines", "shapes-plain-4", "shapes-two-4"}
    two = runs["shapes-two-4"]
    assert two["config"]["views"] == 2 and two["config"]["refresh_bank"] and two["config"]["time_budget"] == 4
    assert two["plan"] and two["epochs"] == two["curve"][-1]["epoch"]
    assert two["eval_wall_s"] is not None and two["eval_wall_s"] >= 0  # a fresh run times its scoring
    for r in (two, runs["shapes-plain-4"]):
        for gallery in ("bank", "reembedded"):
            m = r["final"][gallery]
            assert 0 < m["knn"] <= 100 and 0 < m["nn1"] <= 100 and 0 < m["map"] <= 100
        assert r["curve"][0]["epoch"] == 0 and all(p["wall_s"] is not None for p in r["curve"])
    # the refreshed bank is the re-embedded gallery: the same scores
    for key in ("knn", "nn1", "map"):  # equal up to the float rounding of two embedding passes
        assert abs(two["final"]["bank"][key] - two["final"]["reembedded"][key]) < 1e-3
    base = runs["shapes-baselines"]
    assert {"pixels", "random_init"} <= set(base)
    table = (out / "efficiency.md").read_text()
    assert "| raw pixels |" in table and "| two |" in table and "| plain |" in table
    text = report.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text and "| two |" in text
    assert (out / "efficiency.png").stat().st_size > 0
    assert {"pixels", "random_init", "pixels_whitened"} <= set(base)
    assert "| two |" in table and "PCA-whitened" in table
    # a second call trains nothing
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    assert efficiency.main(args) == 0
    assert stamp == {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    # runs and baselines recorded before the whitened column gain it from their checkpoints, unchanged otherwise
    path, base_path = out / "runs" / "shapes-two-4.json", out / "runs" / "shapes-baselines.json"
    whitened = two["final"].pop("bank_whitened")
    path.write_text(json.dumps(two))
    pixels_whitened = base.pop("pixels_whitened")
    base_path.write_text(json.dumps(base))
    assert efficiency.main(["--dataset", "shapes", "--out", str(out), "--rescore-whitened"]) == 0
    again, base_again = json.loads(path.read_text()), json.loads(base_path.read_text())
    assert again["final"]["bank"] == two["final"]["bank"] and base_again["pixels"] == base["pixels"]
    assert base_again["pixels_whitened"] == pixels_whitened
    for key in ("knn", "nn1", "map"):  # the same checkpoint re-embedded: equal up to float rounding
        assert abs(again["final"]["bank_whitened"][key] - whitened[key]) < 1e-3


def test_variant_specs_are_validated() -> None:
    v = efficiency.parse_variant("x=views:2,flip_embed:true,lr:0.1")
    assert v.overrides == {"views": 2, "flip_embed": True, "lr": 0.1}
    assert efficiency.parse_variant("plain").overrides == {}
    ft = efficiency.parse_variant("ft=init:general,views:2")
    assert (ft.init, ft.overrides) == ("general", {"views": 2})
    for bad in ("nonsense", "x=no_such_field:1"):
        try:
            efficiency.parse_variant(bad)
        except SystemExit as e:
            assert "variant" in str(e) or "field" in str(e)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_fine_tuning_variant_starts_from_the_bundled_encoder(shapes_root: Path, tmp_path: Path, monkeypatch) -> None:
    from instdisc import bundled
    from instdisc.checkpoint import load

    monkeypatch.setitem(efficiency.DATASETS, "shapes", efficiency.Dataset("shapes", shapes_root, "tiny", 32))
    out = tmp_path / "res"
    assert efficiency.main(["--dataset", "shapes", "--budgets", "4", "--variants", "init-general",
                            "--out", str(out)]) == 0
    r = json.loads((out / "runs" / "shapes-init-general-4.json").read_text())
    card = bundled.ModelCard.read(bundled.MODELS_DIR / bundled.THUMBNAIL / "card.json")
    # the network is the bundled encoder's (width 16), not the dataset preset's (tiny: width 8)
    assert r["init"] == "general" and r["config"]["width"] == card.config["width"] == 16
    saved = load(out / "checkpoints" / "shapes-init-general-4" / "checkpoint.pt")
    assert saved["init"]["sha256"] == card.sha256
    assert all(0 < r["final"]["bank"][k] <= 100 for k in ("knn", "nn1", "map"))


def test_a_sliced_dataset_trains_and_scores_on_the_same_seeded_slice(shapes_root: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    """The small-folder case (photos-4k): the slice is the folder, the gallery and the baselines' gallery."""
    ds = efficiency.Dataset("shapes-90", shapes_root, "tiny", 32, train_images=90)
    monkeypatch.setitem(efficiency.DATASETS, ds.name, ds)
    first = efficiency.splits_at(ds, 32, {}, quick=False, progress=False)
    again = efficiency.splits_at(ds, 32, {}, quick=False, progress=False)
    assert len(first[0]) == 90 and first[0].paths == again[0].paths  # seeded: the same 90 files every time
    assert len(first[1]) == 100  # the queries are still the whole test split
    out = tmp_path / "res"
    assert efficiency.main(["--dataset", ds.name, "--budgets", "4", "--variants", "plain", "--out", str(out)]) == 0
    run = json.loads((out / "runs" / "shapes-90-plain-4.json").read_text())
    base = json.loads((out / "runs" / "shapes-90-baselines.json").read_text())
    assert run["train_images"] == base["train_images"] == 90 and run["test_images"] == base["test_images"] == 100
    assert "90-image slice" in (out / "efficiency.md").read_text()


def test_an_unseen_dataset_splits_the_test_split_into_folder_and_queries(shapes_root: Path) -> None:
    """photos-unseen: folder/gallery and queries are disjoint seeded halves of the test split."""
    ds = efficiency.Dataset("shapes-unseen", shapes_root, "tiny", 32, unseen=True)
    folder, queries = efficiency.splits_at(ds, 32, {}, quick=False, progress=False)
    again, _ = efficiency.splits_at(ds, 32, {}, quick=False, progress=False)
    assert len(folder) == len(queries) == 50 and folder.paths == again.paths
    assert not set(folder.paths) & set(queries.paths)
    assert folder.root == queries.root and folder.classes == queries.classes


def test_embed_resolution_scores_one_checkpoint_at_several_sides(tiny_run, shapes_root, tmp_path):
    from experiments import embed_resolution

    out = tmp_path / "res.json"
    assert embed_resolution.main(["--checkpoint", str(tiny_run), "--data", str(shapes_root), "--scales", "1", "1.5",
                                  "--flip", "--combine", "1,1.5", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [(row["side"], row["flip"]) for row in r["rows"]] == [(32, False), (32, True), (48, False), (48, True)]
    for row in r["rows"]:
        assert 0 <= row["nn1"] <= 100 and 0 < row["map"] <= 100 and 0 < row["whitened"]["map"] <= 100
    assert len({round(row["map"], 6) for row in r["rows"]}) > 1  # the side changes the embeddings
    for row in r["rows"]:
        assert ("near_duplicate" in row) == (not row["flip"])
        if not row["flip"]:
            assert 0 <= row["near_duplicate"]["top1"] <= row["near_duplicate"]["top10"] <= 100
            assert 0 <= row["whitened"]["near_duplicate"]["top1"] <= 100
    (combined,) = r["combined"]
    assert combined["sides"] == [32, 48] and 0 < combined["map"] <= 100
    assert 0 <= combined["dba10"]["near_duplicate"]["top1"] <= 100
    # the average of two sides is neither side's embedding
    assert round(combined["map"], 6) not in {round(row["map"], 6) for row in r["rows"]}
    assert out.with_suffix(".png").stat().st_size > 0
    with pytest.raises(SystemExit, match="not among --scales"):
        embed_resolution.main(["--checkpoint", str(tiny_run), "--data", str(shapes_root), "--scales", "1",
                               "--combine", "1,2", "--out", str(out)])
    with pytest.raises(SystemExit):
        embed_resolution.main(["--checkpoint", str(tiny_run), "--data", str(shapes_root), "--scales", "0.5",
                               "--out", str(out)])


# ---------------------------------------------------------------- embed_resolution's scoring functions


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def test_near_duplicate_top1_counts_where_each_original_ranks() -> None:
    """Per cent of edited copies whose original is ranked first / within the first 10, ranks set by hand."""
    from experiments.embed_resolution import near_duplicate_top1

    gallery = torch.eye(12)
    queries = _unit(torch.stack([
        gallery[3],  # original 3 first
        gallery[5] + 0.5 * gallery[7],  # original 5 first, 7 second
        gallery[1] + 0.5 * gallery[2],  # original 2 second, behind 1
        gallery[:10].sum(0) + 0.1 * gallery[11],  # original 11 eleventh: ten rows score higher
    ]))
    out = near_duplicate_top1(queries, torch.tensor([3, 5, 2, 11]), gallery)
    assert out == {"top1": 50.0, "top10": 75.0}


def test_database_side_augmentation_sums_the_k_nearest_weighted_by_similarity_cubed() -> None:
    from experiments.embed_resolution import database_side_augmentation

    # by hand: a pair at cosine 0.6 becomes a + 0.6^3 b, re-normalised; a neighbour at a negative cosine
    # weighs nothing, so a pair at cosine -0.6 stays as it is
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.6, 0.8])
    pair = database_side_augmentation(torch.stack([a, b]), k=2, alpha=3.0)
    torch.testing.assert_close(pair, _unit(torch.stack([a + 0.216 * b, b + 0.216 * a])))
    apart = torch.stack([a, torch.tensor([-0.6, 0.8])])
    torch.testing.assert_close(database_side_augmentation(apart, k=2, alpha=3.0), apart)
    # the same sum written out row by row, on random rows
    g = _unit(torch.randn(30, 8, generator=torch.Generator().manual_seed(0)))
    sims = (g @ g.T).numpy()
    rows = []
    for i in range(30):
        near = sims[i].argsort()[::-1][:4]
        rows.append(sum(max(float(sims[i, j]), 0.0) ** 3 * g[j] for j in near))
    torch.testing.assert_close(database_side_augmentation(g, k=4, alpha=3.0), _unit(torch.stack(rows)))


def test_scored_row_whitens_on_the_gallery_and_augments_only_the_gallery() -> None:
    """embed_resolution's row: as they are, PCA-whitened with the gallery's fit (queries and edited copies
    mapped alike), and with DBA of the gallery; 1-NN and the near-duplicate ranks recomputed here."""
    from types import SimpleNamespace

    from experiments.embed_resolution import DBA_K, database_side_augmentation, scored
    from instdisc.whitening import fit_whitening

    gen = torch.Generator().manual_seed(1)
    centres = torch.eye(6)[1:4]
    g_labels, q_labels = torch.arange(60) % 3, torch.arange(24) % 3
    loud = torch.tensor([4.0, 0, 0, 0, 0, 0])  # a loud axis that says nothing about the class: whitening quiets it

    def draw(labels: torch.Tensor) -> torch.Tensor:
        n = len(labels)
        return _unit(centres[labels] + 0.5 * torch.randn(n, 6, generator=gen) + torch.randn(n, 1, generator=gen) * loud)

    g, q = draw(g_labels), draw(q_labels)
    targets = torch.arange(0, 60, 6)
    e = _unit(g[targets] + 0.3 * torch.randn(10, 6, generator=gen))
    train = SimpleNamespace(labels=g_labels, classes=["a", "b", "c"])
    test = SimpleNamespace(labels=q_labels, classes=train.classes)
    row = scored(g, q, e, test, train, targets)

    def nn1(qq: torch.Tensor, gg: torch.Tensor) -> float:
        return 100 * float((g_labels[(qq @ gg.T).argmax(1)] == q_labels).double().mean())

    def near_dup(ee: torch.Tensor, gg: torch.Tensor) -> dict:
        s = ee @ gg.T
        ranks = (s > s[torch.arange(len(ee)), targets][:, None]).sum(1)
        return {"top1": 100 * float((ranks == 0).double().mean()), "top10": 100 * float((ranks < 10).double().mean())}

    w = fit_whitening(g)
    dba = database_side_augmentation(g)
    whitened, augmented = row["whitened"], row[f"dba{DBA_K}"]
    assert row["nn1"] == pytest.approx(nn1(q, g)) and row["near_duplicate"] == near_dup(e, g)
    assert whitened["nn1"] == pytest.approx(nn1(w.apply(q), w.apply(g)))
    assert whitened["near_duplicate"] == near_dup(w.apply(e), w.apply(g))
    assert augmented["nn1"] == pytest.approx(nn1(q, dba)) and augmented["near_duplicate"] == near_dup(e, dba)
    assert whitened["nn1"] != row["nn1"] and augmented["map"] != row["map"]  # each variant changes the ranking
