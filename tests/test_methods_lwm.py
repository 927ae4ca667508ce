"""LWM: one global magnitude threshold over all conv and dense kernels, exact count kept."""

import keras
import numpy as np
import pytest

from frep_tf.layers.reparam import reparam_layers
from frep_tf.methods import lwm
from frep_tf.models import build_model


def test_one_threshold_over_all_kernels_matches_numpy():
    rng = np.random.default_rng(0)
    # Layers on different scales: a single global threshold keeps more of the larger one.
    kernels = [rng.normal(size=(3, 3, 2, 4)) * 0.1, rng.normal(size=(3, 3, 4, 6)), rng.normal(size=(6, 3)) * 3]
    masks = lwm.global_threshold_masks(kernels, 0.8)
    flat = np.concatenate([np.abs(k).ravel() for k in kernels])
    keep = round(0.2 * flat.size)
    threshold = np.sort(flat)[::-1][keep - 1]  # numpy reference: the keep-th largest |w|
    assert sum(int(m.sum()) for m in masks) == keep
    for k, m in zip(kernels, masks, strict=True):
        np.testing.assert_array_equal(m, (np.abs(k) >= threshold).astype(np.float32))
    kept = np.concatenate([np.abs(k)[m == 1] for k, m in zip(kernels, masks, strict=True)])
    dropped = np.concatenate([np.abs(k)[m == 0] for k, m in zip(kernels, masks, strict=True)])
    assert kept.min() > dropped.max()  # one threshold separates them, across layers
    assert masks[0].mean() < masks[1].mean() < masks[2].mean()


def test_prune_applies_the_masks_to_conv_and_dense_layers():
    keras.utils.set_random_seed(0)
    model = build_model("small_cnn", input_shape=(8, 8, 1), parameterization="plain", width=0.25)
    layers = reparam_layers(model)
    before = [np.abs(np.asarray(layer.fused_kernel())) for layer in layers]
    masks = lwm.prune(layers, 0.9)
    total = sum(k.size for k in before)
    fused = [np.asarray(layer.fused_kernel()) for layer in layers]
    assert sum(int(np.count_nonzero(f)) for f in fused) == round(0.1 * total)
    for layer, mask in zip(layers, masks, strict=True):
        np.testing.assert_array_equal(np.asarray(layer.kernel)[mask == 0], 0.0)  # factors projected too
    assert any(m.mean() > 0 for m in masks[:-1]) and masks[-1].mean() > 0  # conv and dense both ranked


def test_bad_sparsity_is_a_clear_error():
    with pytest.raises(ValueError, match="sparsity=1.5"):
        lwm.global_threshold_masks([np.ones((2, 2))], 1.5)
