"""The paper's augmentation, applied to a whole uint8 batch on the training device.

Per-image PIL transforms in DataLoader workers (the reference code's pipeline) starve a
2-core CPU and cannot keep a GPU busy. Here every random parameter is drawn per sample on
the CPU from an explicit ``torch.Generator`` (so runs and resumes are reproducible on any
device) and the pixels are transformed in a few batched tensor ops:

- RandomResizedCrop(scale=(0.2, 1), ratio=(3/4, 4/3)) and horizontal flip: one
  ``affine_grid``/``grid_sample`` (bilinear), with torchvision's crop-sampling rule;
- ColorJitter(0.4, 0.4, 0.4, 0.4): brightness, contrast, saturation and hue with the same
  factor ranges and per-sample random order as torchvision;
- RandomGrayscale(p=0.2) with ITU-R 601 luma weights, as torchvision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
# Area range of the multi-crop lever's small crops (TrainConfig.small_crops): SwAV's small crops
# cover 5-14 % of an ImageNet photo; a 32 px CIFAR image has little to spare, so they are larger here.
SMALL_CROP_SCALE = (0.1, 0.5)


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.4
    grayscale_p: float = 0.2
    flip_p: float = 0.5


def sample_crops(
    n: int, height: int, width: int, cfg: AugmentConfig, gen: torch.Generator, attempts: int = 10
) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params, vectorised: (n, 4) of top, left, h, w."""
    area = height * width
    lo, hi = cfg.crop_scale
    target = area * (lo + (hi - lo) * torch.rand(n, attempts, generator=gen, dtype=torch.float64))
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, attempts, generator=gen, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    # Fallback (no attempt fitted): central crop with the ratio clamped, as torchvision.
    in_ratio = width / height
    if in_ratio < cfg.crop_ratio[0]:
        fw, fh = width, round(width / cfg.crop_ratio[0])
    elif in_ratio > cfg.crop_ratio[1]:
        fw, fh = round(height * cfg.crop_ratio[1]), height
    else:
        fw, fh = width, height
    rows = torch.arange(n)
    pick = first.clamp(min=0)
    cw = torch.where(first >= 0, w[rows, pick], torch.tensor(float(fw), dtype=torch.float64))
    ch = torch.where(first >= 0, h[rows, pick], torch.tensor(float(fh), dtype=torch.float64))
    # torch.randint(0, hi + 1) per sample: floor(u * (hi + 1)).
    u = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    top = torch.floor(u[:, 0] * (height - ch + 1))
    left = torch.floor(u[:, 1] * (width - cw + 1))
    top = torch.where(first >= 0, top, torch.tensor((height - fh) // 2, dtype=torch.float64))
    left = torch.where(first >= 0, left, torch.tensor((width - fw) // 2, dtype=torch.float64))
    return torch.stack([top, left, ch, cw], 1).float()


def crop_flip(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Resample each image's crop box to ``size`` x ``size``, mirrored where ``flip``."""
    n, _, height, width = x.shape
    top, left, h, w = boxes.to(x.device).unbind(1)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = (w / width) * torch.where(flip.to(x.device), -1.0, 1.0)
    theta[:, 0, 2] = (left + w / 2) / width * 2 - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (top + h / 2) / height * 2 - 1
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    crd = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    mask = i.unsqueeze(1) == torch.arange(6, device=x.device).view(1, -1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), 1)
    a2 = torch.stack((t, v, v, q, p, p), 1)
    a3 = torch.stack((p, p, t, v, v, q), 1)
    a4 = torch.stack((a1, a2, a3), 1)
    return torch.einsum("nijk,nxijk->nxjk", mask.to(x.dtype), a4)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp(0.0, 1.0)


def _apply_op(op: int, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    if op == 0:  # brightness
        return (x * f).clamp(0.0, 1.0)
    if op == 1:  # contrast: blend with the mean grey level of the image
        return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f)
    if op == 2:  # saturation
        return _blend(x, grayscale(x), f)
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + f.view(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], 1))


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def jitter_params(n: int, cfg: AugmentConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ColorJitter's per-sample (factors (n, 4), op order (n, 4)), drawn as torchvision draws them."""
    factors = torch.stack(
        [
            _uniform(n, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, gen),
            _uniform(n, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, gen),
            _uniform(n, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, gen),
            _uniform(n, -cfg.hue, cfg.hue, gen),
        ],
        1,
    )
    order = torch.argsort(torch.rand(n, 4, generator=gen), dim=1)
    return factors, order


def apply_jitter(x: torch.Tensor, cfg: AugmentConfig, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Apply the four ops with drawn factors, each sample in its own random order."""
    enabled = [cfg.brightness > 0, cfg.contrast > 0, cfg.saturation > 0, cfg.hue > 0]
    for r in range(4):
        for op in range(4):
            if not enabled[op]:
                continue
            sel = (order[:, r] == op).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            sel_d = sel.to(x.device)
            x[sel_d] = _apply_op(op, x[sel_d], factors[sel, op].to(x.device, x.dtype))
    return x


def color_jitter(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Per-sample factors and per-sample random order of the four ops, as torchvision."""
    factors, order = jitter_params(x.shape[0], cfg, gen)
    return apply_jitter(x, cfg, factors, order)


@dataclass(frozen=True)
class AugmentDraw:
    """Every random parameter of one batch, one row per sample.

    Drawing is separate from applying so that data-parallel ranks can draw the whole global
    batch's parameters from the shared generator and each augment only its slice
    (:meth:`rows`): sample j then gets the same augmentation whatever the number of ranks.
    """

    boxes: torch.Tensor  # (n, 4) top, left, h, w
    flip: torch.Tensor  # (n,) bool
    factors: torch.Tensor  # (n, 4) brightness, contrast, saturation, hue
    order: torch.Tensor  # (n, 4) jitter op order
    gray: torch.Tensor  # (n,) bool

    def rows(self, lo: int, hi: int) -> AugmentDraw:
        return AugmentDraw(self.boxes[lo:hi], self.flip[lo:hi], self.factors[lo:hi], self.order[lo:hi],
                           self.gray[lo:hi])


class BatchAugment:
    """uint8 (N, 3, H, W) batch -> normalised float (N, 3, size, size), augmented."""

    def __init__(
        self,
        size: int,
        cfg: AugmentConfig | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        self.size = size
        self.cfg = cfg or AugmentConfig()
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, height, width = images.shape
        return self.apply(images, self.sample(n, height, width, gen))

    def sample(self, n: int, height: int, width: int, gen: torch.Generator) -> AugmentDraw:
        """Draw the parameters of ``n`` samples (the draws and their order are those of ``__call__``)."""
        cfg = self.cfg
        boxes = sample_crops(n, height, width, cfg, gen)
        flip = torch.rand(n, generator=gen) < cfg.flip_p
        factors, order = jitter_params(n, cfg, gen)
        gray = torch.rand(n, generator=gen) < cfg.grayscale_p
        return AugmentDraw(boxes, flip, factors, order, gray)

    def apply(self, images: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
        """Augment a uint8 batch with drawn parameters (one row of ``draw`` per image)."""
        if draw.boxes.shape[0] != images.shape[0]:
            raise ValueError(f"{draw.boxes.shape[0]} drawn parameter rows for {images.shape[0]} images")
        x = crop_flip(images.float().div_(255.0), draw.boxes, draw.flip, self.size)
        x = apply_jitter(x, self.cfg, draw.factors, draw.order)
        gray = draw.gray.to(x.device)
        x = torch.where(gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
        return normalize(x, self.mean, self.std)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean.to(x.device)) / std.to(x.device)


def to_input(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """The evaluation transform: uint8 batch -> normalised float, no augmentation."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return normalize(images.float().div(255.0), m, s)
