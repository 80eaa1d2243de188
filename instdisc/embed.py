"""Batched inference: uint8 images -> unit embeddings, with the evaluation transform.

Images stored above the encoder's side (a training collection's cache,
:class:`instdisc.imagecache.StoredImages`) are resized to their ``eval_size`` first, so the
memory bank, the training monitor and the index all embed the same square.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from .augment import to_input
from .images import resize_squares
from .model import Encoder
from .runtime import autocast


@torch.no_grad()
def embed(
    encoder: Encoder,
    images: torch.Tensor,
    device: torch.device | None = None,
    bf16: bool = False,
    batch_size: int = 512,
    progress: bool = False,
    desc: str = "embed",
    size: int | None = None,
) -> torch.Tensor:
    """(N, 3, S, S) uint8 -> (N, low_dim) float32 on the CPU; the encoder's mode is restored.

    ``size``: the side the encoder sees (default: the images' ``eval_size``, else their own side);
    an index embedding at several sides passes each in turn.
    """
    device = device or next(encoder.parameters()).device
    size = int(size or getattr(images, "eval_size", images.shape[-1]))
    was_training = encoder.training
    encoder.eval()
    out = torch.empty(images.shape[0], encoder.low_dim)
    try:
        for i in tqdm(range(0, images.shape[0], batch_size), desc=desc, disable=not progress, unit="batch",
                      leave=False):
            x = resize_squares(to_input(images[i : i + batch_size].to(device)), size)
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, bf16):
                out[i : i + batch_size] = encoder(x).float().cpu()
    finally:
        encoder.train(was_training)
    return out
