"""Exact top-k masks and how a mask reaches a layer; shared by the per-layer and global methods.

Counts are exact: `tf.math.top_k` keeps exactly k entries even when magnitudes tie (lower index
first), unlike a percentile threshold (the ADMM original's `np.percentile`), which keeps a
tie-dependent number.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"`sparsity` must be a number in [0, 1). Received: sparsity={sparsity!r}")
    return float(sparsity)


def keep_count(size: int, sparsity: float, minimum: int = 1) -> int:
    """How many of `size` entries survive `sparsity`: round((1 - sparsity) * size), at least `minimum`.

    The same rounding as `pruning.global_unstructured_masks`; the minimum of one keeps a per-layer or
    per-row method from cutting a layer off entirely on tiny test layers.
    """
    check_sparsity(sparsity)
    return int(min(size, max(minimum, int(round((1.0 - sparsity) * size)))))


def topk_mask(values, keep: int):
    """A 0/1 tensor of `values`' shape with ones at the `keep` largest entries (exactly `keep`)."""
    values = tf.convert_to_tensor(values)
    flat = tf.reshape(values, [-1])
    _, index = tf.math.top_k(flat, k=keep, sorted=False)
    ones = tf.ones([keep], values.dtype)
    mask = tf.scatter_nd(index[:, None], ones, tf.shape(flat, out_type=index.dtype))
    return tf.reshape(mask, tf.shape(values))


def apply_masks(layers, masks) -> None:
    """Set fixed masks on reparameterized layers: masks only shrink, and the factors under a pruned
    entry are zeroed so that weight decay and momentum never move it (see `project_factors`)."""
    for layer, mask in zip(layers, masks, strict=True):
        mask = np.asarray(mask, np.float32) * np.asarray(layer.mask, np.float32)
        layer.mask.assign(mask)
        layer.project_factors()


def kernels(layers) -> list:
    """The fused (applied) kernel of every layer, as tensors."""
    return [layer.fused_kernel() for layer in layers]
