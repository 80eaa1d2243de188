"""Command-line glue shared by the scripts: TrainConfig fields become flags, defaults stay in one place."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace

from .config import PRESETS, TrainConfig, preset
from .imagecache import parse_bytes
from .resolution import Resolution, SizeSample, choose_resolution, from_config


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field, defaulting to None so only given flags override the preset."""
    group = parser.add_argument_group("training configuration (defaults: the paper's, or the preset's)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        help_text = f"default {default!r}"
        if f.metadata.get("parse") == "duration":
            group.add_argument(flag, type=parse_duration, default=None,
                               help="a duration: 90s, 20m, 1.5h or seconds (default: off, train --epochs)")
        elif isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(default, tuple):
            group.add_argument(flag, type=type(default[0]) if default else int, nargs="+", default=None,
                               help=help_text)
        else:
            group.add_argument(flag, type=type(default), default=None, help=help_text)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """'20m' -> 1200.0; '90s', '1.5h' and plain seconds too (argparse turns the ValueError into a usage error)."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:], None)
    try:
        value = float(t[:-1] if unit else t) * (unit or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (examples: 90s, 20m, 1.5h)") from None
    if value <= 0 or value != value:
        raise argparse.ArgumentTypeError(f"a time budget must be positive, got {text!r}")
    return value


def config_from_args(args: argparse.Namespace, preset_name: str) -> TrainConfig:
    overrides = {}
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            overrides[f.name] = tuple(v) if isinstance(f.default, tuple) else v
    if "epochs" in overrides and "time_budget" not in overrides:
        overrides["time_budget"] = 0.0  # --epochs N means N epochs, also for presets that carry a time budget
    return preset(preset_name, **overrides)


def preset_names() -> list[str]:
    return sorted(PRESETS)


def parse_ram(text: str) -> int:
    """--max-ram's type: '2G' -> bytes (argparse turns the error into a usage message)."""
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def resolve_training(
    args: argparse.Namespace, sample: SizeSample, gpu: bool, resumed: TrainConfig | None = None
) -> tuple[str, TrainConfig, Resolution]:
    """(preset name, configuration, resolution) of a run: a resumed run keeps its checkpoint's
    resolution, ``--preset`` keeps the preset's, otherwise the collection's sizes choose one
    (:func:`instdisc.resolution.choose_resolution`); ``--image-size`` / ``--cifar-stem`` win."""
    if resumed is not None:
        res = from_config(resumed.image_size, resumed.cifar_stem, sample,
                          f"resumed run: {resumed.image_size} px as trained so far")
        return "checkpoint", resumed, res
    if args.preset is not None:
        cfg = config_from_args(args, args.preset)
        how = "--image-size" if args.image_size is not None else f"--preset {args.preset}"
        return args.preset, cfg, from_config(cfg.image_size, cfg.cifar_stem, sample,
                                             f"{how}: {cfg.image_size} px ({sample.describe()})")
    res = choose_resolution(sample, args.image_size)
    name = res.preset(gpu)
    cfg = config_from_args(args, name)
    stem = res.cifar_stem if args.cifar_stem is None else bool(args.cifar_stem)
    return name, replace(cfg, image_size=res.image_size, cifar_stem=stem), res


ARCH_FIELDS = ("arch", "width", "cifar_stem", "low_dim", "projector", "image_size")  # what fine-tuning must keep


def with_architecture(cfg: TrainConfig, init: TrainConfig) -> TrainConfig:
    """``cfg`` with the network shape and input size of ``init`` (what fine-tuning must keep)."""
    return replace(cfg, **{name: getattr(init, name) for name in ARCH_FIELDS})


def adopt_architecture(
    args: argparse.Namespace, cfg: TrainConfig, init: TrainConfig, sample: SizeSample, source: str
) -> tuple[TrainConfig, Resolution]:
    """Fine-tuning (``--init``): the network's shape and input size come from the encoder it starts from;
    a flag that asks for a different one is an error, not silently dropped."""
    for name in ARCH_FIELDS:
        asked = getattr(args, name, None)
        if asked is not None and asked != getattr(init, name):
            raise ValueError(f"--{name.replace('_', '-')} {asked} does not fit --init {source}, which has "
                             f"{name} {getattr(init, name)!r}: drop the flag or train from scratch")
    cfg = with_architecture(cfg, init)
    return cfg, from_config(cfg.image_size, cfg.cifar_stem, sample,
                            f"--init {source}: {cfg.image_size} px, {'CIFAR' if cfg.cifar_stem else 'ImageNet'} "
                            f"stem, as that encoder was trained ({sample.describe()})")

