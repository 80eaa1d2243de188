"""The batched augmentation reproduces torchvision's per-image transforms statistically."""

import math

import numpy as np
import pytest
import torch
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from instdisc.augment import (
    AugmentConfig,
    BatchAugment,
    color_jitter,
    crop_flip,
    hsv_to_rgb,
    rgb_to_hsv,
    sample_crops,
)


def test_crop_parameters_follow_torchvision_distribution():
    n, h, w = 4000, 32, 32
    cfg = AugmentConfig()
    ours = sample_crops(n, h, w, cfg, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    rrc = T.RandomResizedCrop(32, scale=cfg.crop_scale, ratio=cfg.crop_ratio)
    blank = torch.empty(3, h, w)
    theirs = torch.tensor([[int(v) for v in rrc.get_params(blank, rrc.scale, rrc.ratio)] for _ in range(n)]).float()
    for col, name in ((2, "height"), (3, "width")):
        assert ours[:, col].mean().item() == pytest.approx(theirs[:, col].mean().item(), rel=0.03), name
        assert ours[:, col].std().item() == pytest.approx(theirs[:, col].std().item(), rel=0.08), name
    area_ours = (ours[:, 2] * ours[:, 3] / (h * w)).numpy()
    area_theirs = (theirs[:, 2] * theirs[:, 3] / (h * w)).numpy()
    qs = [0.1, 0.25, 0.5, 0.75, 0.9]
    assert np.allclose(np.quantile(area_ours, qs), np.quantile(area_theirs, qs), atol=0.03)
    assert ((ours[:, 0] + ours[:, 2]) <= h).all() and ((ours[:, 1] + ours[:, 3]) <= w).all()
    assert (ours[:, :2] >= 0).all()
    # top/left uniform over the valid range: mean offset is half the slack
    slack = (h - ours[:, 2]).mean().item()
    assert ours[:, 0].mean().item() == pytest.approx(slack / 2, rel=0.08)


def test_crop_flip_equals_torchvision_resized_crop_on_identity_size():
    x = torch.rand(2, 3, 16, 16)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [4.0, 2.0, 8.0, 8.0]])
    out = crop_flip(x, boxes, torch.tensor([False, True]), 16)
    assert torch.allclose(out[0], x[0], atol=1e-5)  # full-image box, no flip: identity
    ref = TF.hflip(TF.resized_crop(x[1], 4, 2, 8, 8, [16, 16], antialias=False))
    # bilinear upsampling agrees in the interior (borders differ only by edge handling)
    assert torch.allclose(out[1][:, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=0.02)


def test_hsv_round_trip_and_hue_matches_torchvision():
    x = torch.rand(8, 3, 5, 5)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)
    from instdisc.augment import _apply_op

    for hue in (-0.4, -0.1, 0.25):
        assert torch.allclose(_apply_op(3, x, torch.full((8,), hue)), TF.adjust_hue(x, hue), atol=1e-4)


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation"])
def test_single_jitter_op_matches_torchvision_adjust(op):
    x = torch.rand(6, 3, 8, 8)
    factor = 1.3
    cfg = AugmentConfig(**{k: 0.0 for k in ("brightness", "contrast", "saturation", "hue")})
    cfg = AugmentConfig(**{**cfg.__dict__, op: 1e-9})  # enable op with a (nearly) fixed factor 1
    ours_identity = color_jitter(x.clone(), cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(ours_identity, x.clamp(0, 1), atol=1e-6)
    from instdisc.augment import _apply_op

    idx = {"brightness": 0, "contrast": 1, "saturation": 2}[op]
    ours = _apply_op(idx, x, torch.full((6,), factor))
    ref = getattr(TF, f"adjust_{op}")(x, factor)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_jitter_factor_ranges_and_grayscale_fraction():
    n = 2000
    aug = BatchAugment(8)
    imgs = torch.full((n, 3, 8, 8), 128, dtype=torch.uint8)
    imgs[:, 0] = 200  # a reddish constant image: saturation and hue act on it
    out = aug(imgs, torch.Generator().manual_seed(1))
    x = out * aug.std + aug.mean
    gray = (x.max(1).values - x.min(1).values).amax(dim=(1, 2)) < 1e-4
    assert gray.float().mean().item() == pytest.approx(0.2, abs=0.03)
    # torchvision with the same settings on the same image
    torch.manual_seed(1)
    tv = T.Compose([T.ColorJitter(0.4, 0.4, 0.4, 0.4), T.RandomGrayscale(0.2)])
    ref = torch.stack([tv(imgs[0].float() / 255) for _ in range(600)])
    ours_mean, ref_mean = x.mean(dim=(2, 3)), ref.mean(dim=(2, 3))
    assert torch.allclose(ours_mean.mean(0), ref_mean.mean(0), atol=0.03)
    assert torch.allclose(ours_mean.std(0), ref_mean.std(0), atol=0.03)


def test_batch_augment_is_reproducible_and_normalised():
    imgs = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    aug = BatchAugment(24)
    a = aug(imgs, torch.Generator().manual_seed(5))
    b = aug(imgs, torch.Generator().manual_seed(5))
    c = aug(imgs, torch.Generator().manual_seed(6))
    assert a.shape == (16, 3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert math.isfinite(a.abs().max().item())
