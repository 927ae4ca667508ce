"""LWM, the paper's during-training variant: one global magnitude threshold over all conv and dense
kernels at `prune_epoch`, then training continues with the mask fixed.

The ranking is FReP's own global unstructured pruning (`pruning.global_unstructured_masks`): LWM is
that pruning applied to plain layers trained with PGD, so the stage can reuse `GlobalPruning` as is.
"""

from __future__ import annotations

import numpy as np

from frep_tf.methods import masks as masks_lib
from frep_tf.methods.base import Method
from frep_tf.training.pruning import global_unstructured_masks


def global_threshold_masks(kernels, sparsity: float) -> list[np.ndarray]:
    """Keep the round((1 - sparsity) * total) largest |w| over all kernels together (one threshold)."""
    masks_lib.check_sparsity(sparsity)
    return global_unstructured_masks([np.asarray(k) for k in kernels], sparsity)


def prune(layers, sparsity: float) -> list[np.ndarray]:
    """Compute LWM's masks from the layers' fused kernels and apply them; returns the masks."""
    masks = global_threshold_masks([np.asarray(k) for k in masks_lib.kernels(layers)], sparsity)
    masks_lib.apply_masks(layers, masks)
    return masks


class LWM(Method):
    """The paper's during-training baseline: FReP's one `train` stage and its global prune at
    --prune_epoch, on plain layers trained with PGD (the baseline defaults)."""

    name = "lwm"
