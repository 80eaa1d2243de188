"""The learning-efficiency levers against direct computations, and in the real loop.

Each lever is a TrainConfig option that is off by default; here every one is checked for what
it computes (a reference written out independently), and a tiny run with all of them on must
train, resume bit-identically and export what the index uses.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from instdisc import checkpoint
from instdisc.budget import Measured, Plan, plan_epochs, repace, replan_after_first_epoch
from instdisc.cli import parse_duration
from instdisc.config import TrainConfig, preset
from instdisc.data import load_splits
from instdisc.ema import WeightEMA
from instdisc.embed import embed
from instdisc.memory import MemoryBank
from instdisc.method import InstDisc
from instdisc.model import Encoder, embedding_dim
from instdisc.objectives import NonParametricSoftmax, cross_view
from instdisc.train import Interrupted, Trainer, lr_at, neighbour_weight, steps_in_epoch
from instdisc.trained import Checkpoint


def _bank(n: int = 9, d: int = 6, seed: int = 0) -> MemoryBank:
    bank = MemoryBank(n, d)
    bank.reset_random(torch.Generator().manual_seed(seed))
    return bank


def _unit(b: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(b, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_cross_view_is_a_softmax_over_the_batch():
    tau = 0.2
    a, o = _unit(4, 6, 1).requires_grad_(True), _unit(4, 6, 2).requires_grad_(True)
    loss = cross_view(a, o, tau)
    ref = 0.0
    for i in range(4):
        logits = [float(a[i] @ o[j]) / tau for j in range(4)]
        ref += -(logits[i] - math.log(sum(math.exp(x) for x in logits)))
    assert loss.item() == pytest.approx(ref / 4, rel=1e-5)
    loss.backward()
    assert a.grad.abs().sum() > 0 and o.grad.abs().sum() > 0  # both views learn: positives and negatives fresh


def test_self_distillation_is_kl_from_the_square_root_softmax():
    bank, tau, lam = _bank(), 0.1, 0.7
    f, idx = _unit(3, 6, 3).requires_grad_(True), torch.tensor([1, 2, 3])
    base = NonParametricSoftmax(tau)(f, idx, bank).loss
    both = NonParametricSoftmax(tau, self_distill=lam)(f, idx, bank).loss
    kl = 0.0
    for r in range(3):
        p = torch.softmax(f[r].detach().double() @ bank.features.double().t() / tau, 0)
        q = p.sqrt() / p.sqrt().sum()  # the square-root-renormalised distribution
        kl += float((q * (q.log() - p.log())).sum())
    assert (both - base).item() == pytest.approx(lam * kl / 3, rel=1e-4)
    (g_both,) = torch.autograd.grad(both, f)
    assert g_both.abs().sum() > 0
    with pytest.raises(ValueError, match="self_distill"):
        NonParametricSoftmax(tau, self_distill=-1)


def test_gradient_bank_update_scales_the_step_by_one_minus_p():
    feats = _unit(2, 6, 5)
    idx = torch.tensor([1, 3])
    momentum, gradient = _bank(), _bank()
    gradient.rule = "gradient"
    before = gradient.features.clone()
    momentum.update(idx, feats)
    gradient.update(idx, feats, positive_prob=torch.tensor([0.0, 1.0]))
    assert torch.allclose(gradient.features[1], momentum.features[1], atol=1e-6)  # P = 0: the paper's rule
    assert torch.allclose(gradient.features[3], before[3], atol=1e-6)  # P = 1: already discriminated, stays
    with pytest.raises(ValueError, match="probability"):
        gradient.update(idx, feats)
    with pytest.raises(ValueError, match="unknown bank update"):
        MemoryBank(4, 2, rule="copy")


def test_two_views_and_small_crops_in_the_method():
    cfg = TrainConfig(width=8, views=2, small_crops=2, small_crop_size=8, precision="fp32")
    torch.manual_seed(0)
    model = InstDisc(cfg, 10)
    model.bank.reset_random(torch.Generator().manual_seed(0))
    idx = torch.tensor([0, 3, 7, 9])
    g = torch.Generator().manual_seed(1)
    v1, v2 = torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 3, 16, 16, generator=g)
    small = torch.randn(8, 3, 8, 8, generator=g)
    out = model([v1, v2], idx, None, small)
    # reference: the same encoder in the same mode, terms written out one by one
    f = model.encoder(torch.cat([v1, v2])).view(2, 4, -1)
    c = model.encoder(small).view(2, 4, -1)
    obj, tau = model.objective, cfg.temperature
    bank_terms = [obj(x, idx, model.bank).loss for x in (f[0], f[1], c[0], c[1])]  # the paper's loss, each
    pair_terms = [cross_view(f[0], f[1], tau), cross_view(f[1], f[0], tau),
                  cross_view(c[0], f[0], tau), cross_view(c[1], f[0], tau)]
    expected = torch.stack(bank_terms).mean() + torch.stack(pair_terms).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(out.features, F.normalize(f.detach().mean(0), dim=1), atol=1e-5)
    assert out.features.shape == (4, cfg.low_dim) and out.positive_prob.shape == (4,)
    single = InstDisc(TrainConfig(width=8, precision="fp32"), 10)
    single.load_state_dict(model.state_dict())
    # one view: exactly the paper's loss (BatchNorm statistics over that view alone)
    assert single([v1], idx).loss.item() == pytest.approx(obj(model.encoder(v1), idx, model.bank).loss.item(), rel=1e-5)
    with pytest.raises(ValueError, match="parametric"):
        InstDisc(TrainConfig(objective="parametric", views=2), 10)


def test_weight_ema_follows_the_formula_and_warms_up():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    ema = WeightEMA(net, decay=0.9)
    w0 = ema.module.weight.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)  # t = 0: d = min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.module.weight, 0.1 * w0 + 0.9 * net.weight, atol=1e-6)
    for _ in range(200):
        ema.update(net)
    assert torch.allclose(ema.module.weight, net.weight, atol=1e-4)
    with pytest.raises(ValueError):
        WeightEMA(net, 1.0)


def test_flip_averaged_encoder_is_mirror_invariant_in_eval_only():
    torch.manual_seed(0)
    enc = Encoder("resnet18", 8, True, 16, flip_average=True).eval()
    x = torch.randn(3, 3, 16, 16)
    a, b = enc(x), enc(x.flip(3))
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-5)
    plain = Encoder("resnet18", 8, True, 16).eval()
    plain.load_state_dict(enc.state_dict())
    assert not torch.allclose(plain(x), plain(x.flip(3)), atol=1e-3)
    enc.train()
    assert enc(x).shape == (3, 16)  # training sees one view, no averaging


def test_time_budget_plan_fits_and_says_why():
    m = Measured(step_seconds=0.1, steps_per_epoch=100, eval_seconds=5.0, eval_every=1, refresh_seconds=20.0,
                 spent_seconds=30.0)
    plan = plan_epochs(600.0, m)
    # (600 * 0.97 - 30 - 20) / (10 + 5) = 35.47 -> 35.46 epochs (a whole number of steps), 36 started
    assert plan.schedule_epochs == pytest.approx(35.46) and plan.epochs == 36 and plan.seconds <= 600.0
    assert "35.46 epochs" in plan.reason and "100 steps" in plan.reason
    small = plan_epochs(600.0, Measured(0.1, 2, 0.0, 0, 0.0, 1.0))
    assert small.schedule_epochs == 2905.0  # a small collection gets many epochs
    huge = plan_epochs(60.0, Measured(1.0, 1000, 0.0, 0, 0.0, 0.0))
    assert huge.schedule_epochs == pytest.approx(0.058) and huge.epochs == 1  # part of one epoch: no overrun
    tiny = plan_epochs(1.0, Measured(5.0, 1000, 0.0, 0, 0.0, 0.0))
    assert tiny.schedule_epochs == pytest.approx(0.001) and "overrun" in tiny.reason  # one step at least
    again = replan_after_first_epoch(600.0, plan, epoch_wall_seconds=20.0, spent_seconds=50.0, refresh_seconds=20.0,
                                     steps_per_epoch=100)
    assert again.schedule_epochs == pytest.approx(1 + 25.6)  # (582 - 50 - 20) / 20 = 25.6 more
    with pytest.raises(ValueError):
        plan_epochs(0, m)


def test_a_run_that_drifts_off_its_budget_is_re_paced_to_end_on_time():
    # 600 s budget, 30-epoch plan; 10 epochs done in 200 s: on pace (20 s an epoch -> 600 s end... within 2 %)
    plan = Plan(29.1, 582.0, "first plan")
    assert repace(600.0, plan, 10, 20.0, 200.0, 0.0, 100) is None
    # the machine slowed to 26 s an epoch: 19.1 epochs left would end at 697 s; the rest is shortened
    slow = repace(600.0, plan, 10, 26.0, 200.0, 0.0, 100)
    assert slow is not None and slow.seconds <= 600.0 * 0.97 + 1e-9
    assert slow.schedule_epochs == pytest.approx(10 + 14.69)  # (582 - 200) / 26 = 14.69 more
    assert "re-paced after epoch 10" in slow.reason and slow.reason.startswith("first plan")
    # it sped up again: the schedule grows, and the note is the latest one only
    fast = repace(600.0, slow, 15, 15.0, 300.0, 10.0, 100)
    assert fast is not None and fast.schedule_epochs == pytest.approx(15 + 18.13)  # (582 - 300 - 10) / 15
    assert fast.reason.count("re-paced") == 1 and "after epoch 15" in fast.reason


def test_fractional_schedule_ends_mid_epoch_with_the_cosine_at_zero():
    cfg = preset("tiny", epochs=3, schedule_epochs=2.5)
    assert [steps_in_epoch(cfg, e, 10) for e in range(3)] == [10, 10, 5]
    assert lr_at(cfg, 2.5) == pytest.approx(0.0, abs=1e-12) and lr_at(cfg, 1.25) == pytest.approx(cfg.lr / 2)


@pytest.mark.parametrize("text,seconds", [("20m", 1200.0), ("90s", 90.0), ("1.5h", 5400.0), ("45", 45.0)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-5m", "0", "m"])
def test_parse_duration_rejects_nonsense(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


LEVERS = dict(views=2, small_crops=1, small_crop_size=16, self_distill=0.5, bank_update="gradient",
              nesterov=True, ema=0.9, flip_embed=True, refresh_bank=True, crop_size=24, neighbours=0.5)


def test_all_levers_train_resume_exactly_and_export_the_average(shapes_root, tmp_path):
    cfg = preset("tiny", epochs=2, batch_size=32, precision="fp32", **LEVERS)
    train, ev = load_splits(shapes_root, 32, progress=False)
    full = Trainer(cfg, train, ev, tmp_path / "full", device="cpu", progress=False)
    history = full.fit()
    assert history[-1]["epoch"] == 2 and full.refreshed
    part = Trainer(cfg, train, ev, tmp_path / "part", device="cpu", progress=False)
    with pytest.raises(Interrupted):
        part.fit(stop_after_steps=9)
    resumed = Trainer.resume(tmp_path / "part" / "checkpoint.pt", train, ev, device="cpu", progress=False)
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for k, v in full.ema.module.state_dict().items():
        assert torch.equal(v, resumed.ema.module.state_dict()[k]), k
    # the bank was refreshed by the averaged, flip-averaged encoder: the index gets those rows
    ckpt = checkpoint.load(tmp_path / "full" / "checkpoint.pt")
    enc = checkpoint.encoder_from(ckpt)
    assert enc.flip_average
    for k, v in full.ema.module.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v), k
    fresh = full.features(train)
    assert torch.allclose(checkpoint.bank_from(ckpt), fresh, atol=1e-5)


def test_time_budget_run_plans_its_epochs(shapes_root, tmp_path):
    cfg = preset("tiny", epochs=1000, batch_size=32, precision="fp32", time_budget=20.0)
    train, ev = load_splits(shapes_root, 32, progress=False)
    t = Trainer(cfg, train, ev, tmp_path, device="cpu", progress=False)
    history = t.fit()
    assert t.plan and "epochs" in t.plan
    assert t.cfg.epochs == history[-1]["epoch"] < 1000
    assert t.global_step == round(t.cfg.schedule_epochs * 7)  # 240 images / 32: 7 steps an epoch, last one partial
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert saved["plan"] == t.plan and saved["config"]["schedule_epochs"] == t.cfg.schedule_epochs
    assert history[-1]["wall"] < 20.0 * 2  # the plan held (it adapts to the speed it measures)
    assert history[-1]["lr"] < 1e-3 * cfg.lr  # the schedule finished


def test_crop_larger_than_images_is_refused(shapes_root, tmp_path):
    train, ev = load_splits(shapes_root, 32, progress=False)
    with pytest.raises(ValueError, match="crop_size"):
        Trainer(preset("tiny", crop_size=48), train, ev, tmp_path, device="cpu", progress=False)


def test_bank_weight_scales_the_bank_loss_and_zero_leaves_the_batch_softmax_alone():
    torch.manual_seed(0)
    cfg = preset("tiny", views=2, low_dim=16)
    model = InstDisc(cfg, 20)
    model.bank.reset_random(torch.Generator().manual_seed(1))
    x = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(s)) for s in (2, 3)]
    idx = torch.tensor([0, 5, 7, 9])
    model.eval()  # BatchNorm from running statistics: the same features in every forward below
    f = torch.stack([model.encoder(v) for v in x])  # 2 x 4 x 16
    objective = model.objective
    bank = torch.stack([objective(fv, idx, model.bank).loss for fv in f]).mean()
    batch = (cross_view(f[0], f[1], cfg.temperature) + cross_view(f[1], f[0], cfg.temperature)) / 2
    assert model(x, idx).loss.item() == pytest.approx((bank + batch).item(), rel=1e-5)
    half = InstDisc(preset("tiny", views=2, low_dim=16, bank_weight=0.5), 20)
    half.load_state_dict(model.state_dict())
    half.eval()
    assert half(x, idx).loss.item() == pytest.approx((0.5 * bank + batch).item(), rel=1e-5)
    off = InstDisc(preset("tiny", views=2, low_dim=16, bank_weight=0.0), 20)
    off.load_state_dict(model.state_dict())
    off.eval()
    out = off(x, idx)
    assert out.loss.item() == pytest.approx(batch.item(), rel=1e-5) and out.positive_prob is None
    before = off.bank.features.clone()
    off.update_bank(idx, out)  # the bank still follows the features (monitor, export)
    assert not torch.equal(off.bank.features[idx], before[idx])
    bad_configs = ({"bank_weight": 0.0}, {"bank_weight": -1.0},
                   {"bank_weight": 0.0, "views": 2, "bank_update": "gradient"})
    for bad in bad_configs:
        with pytest.raises(ValueError, match="bank_weight"):
            InstDisc(preset("tiny", **bad), 20)


def test_a_batch_only_run_trains_in_the_loop_and_keeps_its_bank_current(shapes_root, tmp_path):
    cfg = preset("tiny", epochs=1, batch_size=32, precision="fp32", views=2, bank_weight=0.0, refresh_bank=True)
    train, ev = load_splits(shapes_root, 32, progress=False)
    t = Trainer(cfg, train, ev, tmp_path, device="cpu", progress=False)
    history = t.fit()
    assert history[-1]["epoch"] == 1 and math.isfinite(history[-1]["loss"])
    assert torch.allclose(t.model.bank.features, t.features(train), atol=1e-5)  # exported rows = the final encoder's


def test_projector_head_trains_on_projections_and_embeds_the_trunk_feature():
    torch.manual_seed(0)
    cfg = preset("tiny", views=2, bank_weight=0.0, projector=32, low_dim=16)  # width 8: trunk feature 64-d
    assert embedding_dim(cfg) == 64 and embedding_dim(preset("tiny")) == 128
    model = InstDisc(cfg, 20)
    assert model.bank.features.shape == (20, 64) and model.encoder.low_dim == 64
    x = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(s)) for s in (2, 3)]
    idx = torch.tensor([0, 5, 7, 9])
    model.eval()
    enc = model.encoder
    emb = torch.stack([enc(v) for v in x])  # 2 x 4 x 64: the pooled trunk feature, unit length
    assert torch.allclose(emb[0], F.normalize(enc.trunk(x[0]), dim=1), atol=1e-6)
    z = torch.stack([enc.encode(v)[1] for v in x])  # 2 x 4 x 16: what the loss compares
    assert z.shape == (2, 4, 16) and torch.allclose(z.norm(dim=2), torch.ones(2, 4), atol=1e-5)
    out = model(x, idx)
    batch = (cross_view(z[0], z[1], cfg.temperature) + cross_view(z[1], z[0], cfg.temperature)) / 2
    assert out.loss.item() == pytest.approx(batch.item(), rel=1e-5)
    assert torch.allclose(out.features, F.normalize(emb.mean(0), dim=1), atol=1e-6)  # the bank gets embeddings
    model.train()
    model(x, idx).loss.backward()
    assert enc.projector[0].weight.grad.abs().sum() > 0 and enc.trunk.conv1.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="projector"):
        InstDisc(preset("tiny", views=2, projector=32), 20)  # the bank loss would compare across spaces


def test_a_projector_run_exports_trunk_features_that_the_index_reads(shapes_root, tmp_path):
    cfg = preset("tiny", epochs=1, batch_size=32, precision="fp32", views=2, bank_weight=0.0, projector=32,
                 refresh_bank=True)
    train, ev = load_splits(shapes_root, 32, progress=False)
    t = Trainer(cfg, train, ev, tmp_path, device="cpu", progress=False)
    history = t.fit()
    assert math.isfinite(history[-1]["loss"]) and history[-1]["knn_top1"] is not None
    ckpt = Checkpoint.load(tmp_path)
    assert ckpt.architecture.low_dim == 64 == ckpt.bank().shape[1]
    enc = ckpt.encoder()
    assert enc.projector is not None and enc.low_dim == 64
    assert torch.allclose(ckpt.bank(), embed(enc, train.images), atol=1e-4)


def test_embed_scale_embeds_whole_images_enlarged_everywhere(shapes_root, tmp_path):
    """FixRes: training crops stay at image_size; the bank, the monitor, the export, the index and
    the queries all embed at image_size x embed_scale, read from the checkpoint."""
    from index.build import BuildOptions, build
    from index.search import SearchIndex
    from instdisc.config import embed_size
    from instdisc.images import resize_squares

    assert embed_size(preset("tiny", embed_scale=1.5)) == 48 and embed_size(preset("tiny")) == 32
    with pytest.raises(ValueError, match="embed_scale"):
        embed_size(preset("tiny", embed_scale=0.5))
    cfg = preset("tiny", epochs=1, batch_size=32, precision="fp32", embed_scale=1.5, refresh_bank=True)
    train, ev = load_splits(shapes_root, 32, progress=False)
    with pytest.raises(ValueError, match="refresh_bank"):  # else the exported bank would be 32 px features
        Trainer(replace(cfg, refresh_bank=False), train, ev, tmp_path / "no", device="cpu", progress=False)
    t = Trainer(cfg, train, ev, tmp_path / "run", device="cpu", progress=False)
    assert t.augment.size == 32  # training crops are not enlarged
    t.warm_start_bank()  # while the steps write the bank, its rows (and the monitor's queries) are at 32 px
    assert t.bank_side == 32 and torch.allclose(t.model.bank.features, embed(t.model.encoder, train.images), atol=1e-5)
    t.fit()
    assert t.bank_side == 48
    ckpt = Checkpoint.load(tmp_path / "run")
    assert ckpt.architecture.image_size == 48
    enc = ckpt.encoder()
    enlarged = resize_squares(train.images.float(), 48).round().clamp(0, 255).to(torch.uint8)
    assert torch.allclose(ckpt.bank(), embed(enc, enlarged), atol=2e-2)
    assert not torch.allclose(ckpt.bank(), embed(enc, train.images), atol=2e-2)  # the 32 px embedding differs
    build(tmp_path / "run" / "checkpoint.pt", tmp_path / "index", images=shapes_root / "train",
          options=BuildOptions(progress=False), overwrite=True)
    idx = SearchIndex.open(tmp_path / "index")
    assert idx.image_size == 48
    from PIL import Image

    first = sorted((shapes_root / "train").rglob("*.png"))[0]
    hits = idx.search_images([Image.open(first)], k=1)[0]
    assert idx.image_path(hits[0].id).name == first.name and hits[0].score > 0.99


def test_nearest_other_is_the_closest_bank_row_but_never_the_instance_itself():
    bank = _bank(n=12, d=6, seed=4)
    idx = torch.tensor([2, 5, 11])
    f = F.normalize(bank.features[idx] + 0.05 * _unit(3, 6, 5), dim=1)  # closest row: each one's own
    near = bank.nearest_other(f, idx)
    for i, row in enumerate(idx.tolist()):
        sims = [(float(f[i] @ bank.features[j]), j) for j in range(12) if j != row]
        assert torch.equal(near[i], bank.features[max(sims)[1]])
    assert not any(torch.equal(near[i], bank.features[r]) for i, r in enumerate(idx.tolist()))


def test_neighbour_positives_mix_the_nearest_bank_row_into_each_view_pair():
    torch.manual_seed(0)
    w = 0.7
    cfg = preset("tiny", views=2, low_dim=16, bank_weight=0.0, neighbours=w)
    model = InstDisc(cfg, 20)
    model.bank.reset_random(torch.Generator().manual_seed(1))
    x = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(s)) for s in (2, 3)]
    idx = torch.tensor([0, 5, 7, 9])
    model.eval()
    f = torch.stack([model.encoder(v) for v in x])  # 2 x 4 x 16
    tau, bank = cfg.temperature, model.bank.features

    def nearest(v: torch.Tensor) -> torch.Tensor:  # written out: most similar row other than the instance's own
        sims = v @ bank.t()
        sims[torch.arange(4), idx] = -math.inf
        return bank[sims.argmax(1)]

    plain = [cross_view(f[0], f[1], tau), cross_view(f[1], f[0], tau)]
    near = [cross_view(nearest(f[0]), f[1], tau), cross_view(nearest(f[1]), f[0], tau)]
    expected = sum((1 - w) * p + w * q for p, q in zip(plain, near, strict=True)) / 2
    assert model(x, idx, neighbours=w).loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert model(x, idx).loss.item() == pytest.approx((sum(plain) / 2).item(), rel=1e-5)  # off: the plain pairs
    # the neighbour is a bank row: the anchor side of the term carries no gradient
    assert not model.bank.nearest_other(f[0].detach().requires_grad_(True), idx).requires_grad
    for bad in ({"neighbours": 0.5}, {"neighbours": 0.5, "views": 2, "bank_weight": 0.0, "projector": 32},
                {"neighbours": 1.5, "views": 2}, {"neighbours_from": -0.1}):
        with pytest.raises(ValueError, match="neighbour"):
            InstDisc(preset("tiny", **bad), 20)


def test_neighbour_positives_switch_on_at_their_point_of_the_schedule(shapes_root, tmp_path):
    cfg = preset("tiny", epochs=4, neighbours=0.5, neighbours_from=0.5)
    assert [neighbour_weight(cfg, e) for e in (0.0, 1.99, 2.0, 3.5)] == [0.0, 0.0, 0.5, 0.5]
    budgeted = replace(cfg, schedule_epochs=3.0)  # a time budget's schedule: half of 3 epochs
    assert neighbour_weight(budgeted, 1.49) == 0.0 and neighbour_weight(budgeted, 1.5) == 0.5
    assert neighbour_weight(replace(cfg, neighbours=0.0), 3.9) == 0.0
    run = preset("tiny", epochs=2, batch_size=32, precision="fp32", views=2, bank_weight=0.0, neighbours=1.0)
    train, ev = load_splits(shapes_root, 32, progress=False)
    t = Trainer(run, train, ev, tmp_path, device="cpu", progress=False)
    seen: list[float] = []
    step = t._step
    t._step = lambda b, lr, nb=0.0: seen.append(nb) or step(b, lr, nb)  # type: ignore[method-assign]
    history = t.fit()
    assert math.isfinite(history[-1]["loss"]) and len(seen) == 14  # 240 images / 32: 7 steps an epoch
    assert seen == [0.0] * 7 + [1.0] * 7  # the second half of the schedule learns from the neighbours
