"""FReP (the paper's method; Ori with --parameterization=plain, FReP-CH with channel) and the post-hoc
ablation: one `train` stage of --epochs. FReP prunes once, globally, at --prune_epoch inside it
(frep_tf.training.pruning.GlobalPruning); post-hoc trains to the end and prunes the final model once,
with no fine-tuning (paper Fig. 8)."""

from __future__ import annotations

import numpy as np

from frep_tf.config import Config
from frep_tf.methods.base import Method


class FReP(Method):
    name = "frep"


class Posthoc(Method):
    name = "posthoc"
    prunes_in_training = False
    prunes_after_training = True

    def after_training(self, final, cfg: Config) -> dict:
        return posthoc_prune(final, cfg.prune.sparsity, cfg.prune.min_layer_density)


def posthoc_prune(final, sparsity: float, min_density: float = 0.0) -> dict:
    """One global magnitude prune of the trained model's fused kernels, no fine-tuning. Returns the
    per-layer densities (refused like FReP's prune)."""
    import keras

    from frep_tf.training.pruning import check_layer_densities, global_unstructured_masks, layer_densities

    layers = [
        layer
        for layer in final.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
        and not isinstance(layer, keras.layers.DepthwiseConv2D)
    ]
    kernels = [np.asarray(layer.kernel) for layer in layers]
    masks = global_unstructured_masks(kernels, sparsity, min_density)
    densities = layer_densities([layer.name for layer in layers], masks)
    check_layer_densities(densities, sparsity, min_density)
    for layer, kernel, mask in zip(layers, kernels, masks, strict=True):
        layer.kernel.assign(kernel * mask)
    return densities
