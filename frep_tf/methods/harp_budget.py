"""HARP's rate and budget math (frep_tf.methods.harp): per-layer kept fractions from the learnt rate
parameters, top-k masks with a straight-through gradient, the budget term with its step-wise gamma, and
the exact allocation of the fine-tuning masks' global budget. Functions of tensors and arrays only; no
Keras layer or model here.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

RATE_FLOOR = 0.1  # r_min = RATE_FLOOR * target density (the original's --alpha)
FREEZE_TOL = 5e-5  # the budget counts as met when its term rounds to 0 at 4 decimals (the original)
MAX_INIT = 0.99  # the largest sigmoid value a rate starts at (the original clips its inverse there)


def rates_of(logits, floor: float):
    """Kept fraction of each layer: sigmoid(a) * (1 - floor) + floor, in (floor, 1)."""
    return tf.sigmoid(logits) * (1.0 - floor) + floor


def logits_of(densities, floor: float) -> np.ndarray:
    """The rate parameters a that give `densities` (the sigmoid's value capped at MAX_INIT)."""
    p = (np.asarray(densities, np.float64) - floor) / (1.0 - floor)
    p = np.clip(p, 1e-6, MAX_INIT)
    return np.log(p / (1.0 - p)).astype(np.float32)


def keep_counts(rates, sizes):
    """Weights each layer keeps at rates r: n - floor((1 - r) n) (the original's `GetSubnet`), int32."""
    n = tf.constant(sizes, tf.float32)
    return tf.cast(n - tf.floor((1.0 - rates) * n), tf.int32)


def rank_mask(values, keep):
    """0/1 tensor with ones at the `keep` largest entries of `values` (keep: a scalar tensor); ties go
    to the lower index, as in `masks.topk_mask`. No dynamic shapes, so `keep` may change every step."""
    values = tf.convert_to_tensor(values)
    flat = tf.reshape(values, [-1])
    order = tf.argsort(flat, direction="DESCENDING", stable=True)
    rank = tf.math.invert_permutation(order)
    return tf.reshape(tf.cast(rank < tf.cast(keep, rank.dtype), values.dtype), tf.shape(values))


def straight_through_mask(abs_scores, rate, size: int):
    """The layer's mask, top-k(|s|) with k from the rate; backward: the mask's gradient to |s|
    unchanged and its sum to the rate."""

    @tf.custom_gradient
    def _mask(values, r):
        keep = keep_counts(tf.reshape(r, [1]), [size])[0]

        def grad(upstream):
            return upstream, tf.reduce_sum(upstream)

        return rank_mask(values, keep), grad

    return _mask(tf.convert_to_tensor(abs_scores), tf.convert_to_tensor(rate))


def budget_term(rates, sizes, target: float):
    """max(sum_l n_l r_l / (N * target) - 1, 0): how far the kept fraction is above the target."""
    n = tf.constant(sizes, tf.float32)
    density = tf.reduce_sum(n * rates) / tf.reduce_sum(n)
    return tf.maximum(density / target - 1.0, 0.0)


def next_gamma(step, total_steps, parts: int, gamma0: float, gamma, frozen, budget):
    """(gamma, frozen) for optimizer step `step` (0-based) of the prune stage, from those of the step
    before and the budget term as that step left it. Step s belongs to run p = floor(s parts / total)
    (`parts` equal runs); at the first step of a run, a met budget (term <= FREEZE_TOL) freezes gamma,
    otherwise gamma becomes (p + 1) * gamma0."""
    step = tf.cast(tf.convert_to_tensor(step), tf.int64)
    total = tf.maximum(tf.cast(tf.convert_to_tensor(total_steps), tf.int64), 1)
    gamma, frozen = tf.convert_to_tensor(gamma, tf.float32), tf.convert_to_tensor(frozen, tf.bool)
    part = step * parts // total
    first = (step > 0) & tf.not_equal(part, (step - 1) * parts // total)
    frozen = frozen | (first & (budget <= FREEZE_TOL))
    grown = gamma0 * tf.cast(part + 1, tf.float32)
    return tf.where(first & ~frozen, grown, gamma), frozen


def allocate(densities, sizes, keep_total: int) -> np.ndarray:
    """Integer kept counts c_l in [1, n_l] with sum c_l == keep_total exactly, proportional to the
    learnt counts densities_l * n_l: one common scale (found by bisection) with each count clipped to
    [1, n_l], then floors plus one for the layers with the largest remainders."""
    sizes = np.asarray(sizes, np.int64)
    want = np.asarray(densities, np.float64) * sizes
    if not len(sizes) <= keep_total <= sizes.sum():
        raise ValueError(f"Cannot keep {keep_total} weights over {len(sizes)} layers of {sizes.sum()} weights.")
    if not np.all(want > 0):
        raise ValueError(f"Densities must be > 0. Received: densities={densities!r}")

    def filled(scale):
        return np.clip(scale * want, 1.0, sizes)

    low, high = 0.0, 1.0
    while filled(high).sum() < keep_total:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if filled(mid).sum() < keep_total:
            low = mid
        else:
            high = mid
    real = filled(high)  # sums to keep_total, up to rounding
    counts = np.floor(real).astype(np.int64)
    rest = keep_total - int(counts.sum())
    by_remainder = np.argsort(-(real - counts), kind="stable")
    counts[by_remainder[:rest]] += 1
    if counts.sum() != keep_total or np.any(counts < 1) or np.any(counts > sizes):
        raise AssertionError(f"allocate: {counts} over {sizes} does not keep {keep_total}")
    return counts
