"""Embedders for collections that are not an index: raw pixels (the baseline), a checkpoint's
encoder (trained or random-init) and a checkpoint's index recipe (its sides averaged, whitened on
the collection, as ``build_index.py`` would embed it), each ``list[PIL] -> (B, d) unit rows`` like
:meth:`index.search.SearchIndex.embed_images`, so calibration can re-embed edited images."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from index.build import BuildOptions, build_sides, gallery_whitening
from index.embedding import IndexEmbedder
from instdisc.embed import embed
from instdisc.evaluation.baselines import pixel_features
from instdisc.images import fit_square, nchw
from instdisc.trained import Checkpoint

from .collection import Embed


def _batch(images: list[Image.Image], size: int) -> torch.Tensor:
    return nchw(np.stack([fit_square(im.convert("RGB"), size) for im in images]))


def pixel_embedder(gallery: list[Image.Image], size: int = 32) -> Embed:
    """Raw pixels at ``size`` px, minus the gallery's mean pixel, L2-normalised (evaluation's baseline)."""
    _, mean = pixel_features(_batch(gallery, size), size)

    def featurise(images: list[Image.Image]) -> np.ndarray:
        return pixel_features(_batch(images, size), size, mean)[0].numpy()

    return featurise


def encoder_embedder(encoder: torch.nn.Module, size: int) -> Embed:
    """An instance-discrimination encoder on the CPU, evaluation transform (fit, centre crop)."""

    def featurise(images: list[Image.Image]) -> np.ndarray:
        v = embed(encoder, _batch(images, size), torch.device("cpu"))
        return torch.nn.functional.normalize(v, dim=1).numpy()

    return featurise


def recipe_embedder(ckpt: Checkpoint, gallery: list[Image.Image], recipe: BuildOptions | None = None) -> Embed:
    """The checkpoint's encoder embedding as an index built from it would (``TrainConfig.index_scales``
    averaged, ``index_whiten`` fitted on ``gallery`` by the build's own rule), on the CPU; ``recipe``'s
    ``scales`` / ``whiten`` replace the checkpoint's, as ``build_index.py --scales / --whiten`` do."""
    recipe, cpu = recipe or BuildOptions(), torch.device("cpu")
    sides = build_sides(ckpt, recipe)
    plain = IndexEmbedder(ckpt.encoder(), sides, None, cpu)
    whitening = gallery_whitening(plain.unwhitened(_batch(gallery, plain.input_size)).numpy(), ckpt, recipe)
    embedder = IndexEmbedder(plain.encoder, sides, whitening, cpu)

    def featurise(images: list[Image.Image]) -> np.ndarray:
        return embedder(_batch(images, embedder.input_size))

    return featurise
