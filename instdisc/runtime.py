"""Device and precision choice: the GPU when present, bf16 autocast where the chip has it."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil

import torch
from torch import nn


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.cache
def cpu_has_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where oneDNN runs bf16 convs fast (measured ~2x)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def use_bf16(device: torch.device, precision: str) -> bool:
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def compile_module(module: nn.Module, device: torch.device) -> None:
    """``torch.compile`` the module in place (its ``state_dict`` keys stay the same).

    Measured on the 2-core AMX CPU: +9 % training images/s for the width-16 encoder (791 vs 725),
    none for width 64 (154.1 vs 154.0); first compiled step 2.4 s / 31 s (width 16 / 64, warm
    inductor cache) -- benchmarks/results/train_throughput.json, BENCHMARKS.md section 1.
    Inductor's CPU backend builds C++, so without a compiler this fails here, with a clear
    message, instead of at the first training step.
    """
    if device.type == "cpu" and not shutil.which(os.environ.get("CXX", "g++")):
        raise ValueError("--compile on the CPU needs a C++ compiler (g++, or $CXX) for torch.compile's "
                         "inductor backend; install one or train without --compile")
    module.compile()
