"""Training configuration: the paper's values as defaults, written once, plus named presets.

``scripts/train.py`` builds its command-line flags from :class:`TrainConfig`'s fields, so a
default lives only here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace


@dataclass(frozen=True)
class TrainConfig:
    # encoder
    arch: str = "resnet18"
    width: int = 64  # base channel width; 64 is the standard ResNet
    cifar_stem: bool = True  # 3x3 stride-1 first conv, no max-pool (for 32x32 images)
    image_size: int = 32
    low_dim: int = 128
    # objective
    objective: str = "softmax"  # softmax (full non-parametric) | nce | parametric
    temperature: float = 0.1  # the reference CIFAR command's tau (0.07 for ImageNet / NCE)
    nce_k: int = 4096  # noise samples m
    z_momentum: float = -1.0  # <0: Z fixed from the first batch (paper); else EMA momentum
    nce_z: str = "constant"  # constant (one Z, the paper's; see z_momentum) | per-sample (each row's own noise draws)
    nce_noise: str = "per-sample"  # per-sample (the paper's: m draws per row) | shared (one draw of m rows per batch)
    memory_momentum: float = 0.5
    bank_init: str = "random"  # random (paper) | encoder (fill from the untrained encoder)
    # optimisation
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"  # step (x0.1 at lr_steps) | cosine
    lr_steps: tuple[int, ...] = (120, 160)
    warmup_epochs: int = 0
    # learning-efficiency levers: each off by default (the paper's method), each measured
    # per CPU-minute by experiments/efficiency.py (REPRODUCTION.md, "Beyond the paper")
    views: int = 1  # full-size augmented views per image; 2: each view's positive is the other view (Ye et al. 2019)
    small_crops: int = 0  # extra low-resolution crops per image, positive = the image's full view (multi-crop)
    small_crop_size: int = 16  # side of those crops in pixels
    bank_weight: float = 1.0  # the paper's bank loss beside the batch softmax (views >= 2, small crops); 0: batch only
    projector: int = 0  # >0: hidden width of an MLP head only the loss sees; the embedding is the trunk's (SimCLR)
    self_distill: float = 0.0  # weight of KL(sqrt-renormalised softmax || softmax) (Cao & Wu 2024); softmax only
    bank_update: str = "momentum"  # momentum (paper) | gradient: the positive row moves by its loss gradient
    neighbours: float = 0.0  # weight in [0, 1] of the bank's nearest neighbour as each view pair's positive (NNCLR)
    neighbours_from: float = 0.5  # fraction of the schedule after which the neighbour positives switch on
    crop_size: int = 0  # training crop side; 0: image_size (smaller crops = cheaper steps, eval stays at image_size)
    nesterov: bool = False
    ema: float = 0.0  # >0: per-step decay of an average of the encoder's weights, used to evaluate and export
    flip_embed: bool = False  # embed for eval/bank export/index/queries as the average with the mirror image
    embed_scale: float = 1.0  # embed (bank, monitor, index, queries) at this x image_size (FixRes; embed_size)
    refresh_bank: bool = False  # after the last epoch, re-embed the training set so the exported bank is fresh
    # how an index built from this checkpoint embeds by default (build_index.py --scales / --whiten; index/embedding.py)
    index_scales: tuple[float, ...] = (1.0,)  # whole images at these x embed_size, the vectors averaged
    index_whiten: bool = False  # PCA whitening fitted on the index's gallery
    time_budget: float = field(default=0.0, metadata={"parse": "duration"})  # seconds; >0: epochs planned to fit
    schedule_epochs: float = 0.0  # the schedule's length in (fractional) epochs, set by the time budget; 0: epochs
    # evaluation
    knn_k: int = 200
    knn_every: int = 1  # epochs between kNN evaluations (0: only at the end)
    # runtime
    precision: str = "auto"  # auto (bf16 autocast where the hardware has it) | fp32 | bf16
    seed: int = 0
    subset: float = 1.0  # fraction of the training set to use (data-size ablation)
    sync_bn: bool = False  # data-parallel runs: BatchNorm statistics over the global batch (SyncBatchNorm)
    compile: bool = False  # torch.compile the encoder (faster steps after a slow first one; see BENCHMARKS.md)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        tuples = {f.name for f in fields(cls) if isinstance(f.default, tuple)}
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in d.items() if k in known})


PRESETS: dict[str, dict] = {
    # The paper's CIFAR-10 run: ResNet18, 200 epochs, lr x0.1 at 120 and 160. Meant for a GPU.
    "paper-cifar": {},
    # Chosen by measurement on 2 CPU cores (see README): a quarter-width ResNet18 trained with
    # bf16 autocast, the bank filled from the untrained encoder, a cosine schedule.
    "cpu-cifar": {
        "width": 16,
        "epochs": 45,
        "lr": 0.06,
        "schedule": "cosine",
        "bank_init": "encoder",
    },
    # Photos of 64 px and up (the tinyimagenet stand-in for a user's folder): the ImageNet stem
    # (7x7 stride 2 + max-pool) takes a 64 px image to 16x16 maps, so a half-width ResNet18 costs
    # about what the quarter-width CIFAR encoder costs at 32 px.
    "cpu-photos": {
        "width": 32,
        "cifar_stem": False,
        "image_size": 64,
        "epochs": 45,
        "lr": 0.06,
        "schedule": "cosine",
        "bank_init": "encoder",
    },
    # The successors of cpu-cifar / cpu-photos that the README and quickstart use: the levers that
    # won per CPU-minute in experiments/efficiency.py (REPRODUCTION.md, "Beyond the paper"): a
    # second view as an extra positive (+6.0 kNN at a 7-minute budget on CIFAR-10) and the bank
    # re-embedded at the end (+3.4); the time budget replaces the epoch count. On CIFAR-10 the
    # two-view batch softmax alone (bank_weight 0: the bank is still kept for the monitor and the
    # export) beat it with the bank loss by +5.2 kNN at 7 minutes (58.8 vs 53.6 %, 2026-12-06), and on
    # the photo subset at 20 minutes by +0.7 kNN / +1.4 1-NN / +0.3 mAP (22.8 / 15.2 / 3.3 %, 2026-12-06).
    # Batch 256 with the lr scaled to 0.12 (twice the batch softmax's negatives): +1.4 kNN at 7 minutes
    # and 69.6 / 62.8 / 20.2 against 68.5 / 61.9 / 20.2 at the full 42 minutes on CIFAR-10 (2026-12-06).
    # Whole images embedded at 1.25x the training side on CIFAR-10 (embed_scale, FixRes): on a 42-minute
    # encoder 71.1 / 65.1 / 22.1 instead of 69.6 / 62.8 / 20.2, an edited copy found first 53.2 % instead
    # of 54.0 (at 1.5x: 70.5 / 65.3 / 24.2 but 42.8 %). Not on photos: at 1.5x a 20-minute photo encoder
    # gains 0.4 / 2.0 / 0.36 points but finds an edited copy first 2.6 % of the time instead of 10.6
    # (1.25x is worse on every metric there). results/embed_resolution/, 2026-12-06.
    # Since commit 9b3df5c the index embeds each image at 32 and 48 px, the vectors averaged (index_scales; the bank
    # stays at 32): 71.5 / 65.8 / 22.8, edited copy first 57.0 % against 1.25x's 71.1 / 65.1 / 22.1, 53.2 %.
    "cpu-cifar-fast": {
        "width": 16,
        "batch_size": 256,
        "lr": 0.12,
        "schedule": "cosine",
        "bank_init": "encoder",
        "views": 2,
        "bank_weight": 0.0,
        "refresh_bank": True,
        "index_scales": (1.0, 1.5),
        "time_budget": 42 * 60.0,
    },
    "cpu-photos-fast": {
        "width": 32,
        "cifar_stem": False,
        "image_size": 64,
        "lr": 0.06,
        "schedule": "cosine",
        "bank_init": "encoder",
        "views": 2,
        "bank_weight": 0.0,
        "refresh_bank": True,
        "time_budget": 20 * 60.0,
        # its index embeds each photo at 64 and 96 px, averaged, PCA-whitened: on the photo subset a 20-minute
        # encoder's kNN rises from 22.8 to 26.7 %, an edited copy found first 9.4 % instead of 10.6 (docs/photos.md)
        "index_scales": (1.0, 1.5),
        "index_whiten": True,
    },
    # The paper's ImageNet setting (ResNet50, NCE m=4096, tau 0.07, batch 256, wd 1e-4).
    "paper-imagenet": {
        "arch": "resnet50",
        "cifar_stem": False,
        "image_size": 224,
        "objective": "nce",
        "temperature": 0.07,
        "batch_size": 256,
        "weight_decay": 1e-4,
    },
    # A few-minute smoke configuration (tests and the quick demo).
    "tiny": {"width": 8, "epochs": 2, "schedule": "cosine", "bank_init": "encoder", "knn_k": 20},
}


def embed_size(cfg: TrainConfig) -> int:
    """Side the encoder embeds whole images at: ``image_size`` x ``embed_scale``.

    Random-resized crops show an object larger than the whole image does at the same side, so a
    network trained on them sees whole images best somewhat enlarged (Touvron et al., FixRes,
    arXiv 1906.06423). The index, the app and the evaluation read this side from the checkpoint.
    """
    if not cfg.embed_scale >= 1.0:
        raise ValueError(f"embed_scale must be >= 1 (embed at image_size or above), got {cfg.embed_scale}")
    return round(cfg.image_size * cfg.embed_scale)


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(TrainConfig(), **{**PRESETS[name], **overrides})
