"""Global masks (pure numpy), and pruning applied during training: exact zeros that never move."""

import keras
import numpy as np
import pytest

from frep_tf.models import build_model
from frep_tf.training.pruning import (
    GlobalPruning,
    global_channel_masks,
    global_unstructured_masks,
    kernel_sparsity,
    make_schedule,
)
from frep_tf.training.robust_model import RobustModel


def test_unstructured_masks_keep_the_global_top_k():
    rng = np.random.default_rng(0)
    kernels = [rng.normal(size=(3, 3, 2, 4)), rng.normal(size=(8, 5)) * 3]
    masks = global_unstructured_masks(kernels, sparsity=0.9)
    flat = np.concatenate([np.abs(k).ravel() for k in kernels])
    keep = round(0.1 * flat.size)
    assert sum(int(m.sum()) for m in masks) == keep
    threshold = np.sort(flat)[-keep]
    for k, m in zip(kernels, masks, strict=True):
        assert np.all((np.abs(k) >= threshold) == (m == 1))
    # Global, not per layer: the larger-scale layer keeps a larger share.
    assert masks[1].mean() > masks[0].mean()


def test_channel_masks_rank_globally_and_keep_one_channel_per_layer():
    rng = np.random.default_rng(1)
    small = rng.normal(size=(3, 3, 2, 6)) * 0.01  # would lose every channel in a pure global ranking
    large = rng.normal(size=(3, 3, 6, 8))
    head = rng.normal(size=(8, 3)) * 0.001
    masks = global_channel_masks([small, large, head], sparsity=0.7, frozen=[False, False, True])
    per_channel = [m.reshape(-1, m.shape[-1]).min(0) for m in masks]
    for m in masks:  # whole output channels, nothing partial
        flat = m.reshape(-1, m.shape[-1])
        assert np.all(flat.min(0) == flat.max(0))
    assert per_channel[0].sum() == 1 and per_channel[0][np.argmax(np.linalg.norm(small.reshape(-1, 6), axis=0))] == 1
    assert per_channel[2].sum() == 3  # the classifier keeps its classes
    assert per_channel[0].sum() + per_channel[1].sum() == round(0.3 * 14)


@pytest.mark.parametrize("parameterization", ["hadamard", "channel", "plain"])
@pytest.mark.parametrize("structured", [False, True])
def test_pruned_weights_are_exact_zeros_and_never_updated(parameterization, structured):
    keras.utils.set_random_seed(0)
    net = build_model("small_cnn", input_shape=(8, 8, 1), parameterization=parameterization, width=0.25)
    model = RobustModel(net, objective="sre", epsilon=0.1, weight_decay=5e-4)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    x = np.random.default_rng(0).random((64, 8, 8, 1)).astype("float32")
    y = np.random.default_rng(1).integers(0, 10, 64)
    pruning = GlobalPruning(make_schedule("oneshot", 0.8, begin_step=2, end_step=0, frequency=1), structured=structured)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[pruning])  # 4 steps, prunes before step 3
    assert bool(model.pruned.numpy())
    masks = [layer.mask.numpy().copy() for layer in model.reparam]
    before = [np.asarray(layer.fused_kernel()) for layer in model.reparam]
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    for layer, mask, old in zip(model.reparam, masks, before, strict=True):
        new = np.asarray(layer.fused_kernel())
        np.testing.assert_array_equal(layer.mask.numpy(), mask)
        assert np.all(new[mask == 0] == 0)
        assert not np.allclose(new[mask == 1], old[mask == 1])  # the kept weights did train
        if parameterization != "channel":
            for factor in layer.prunable_weights():
                assert np.all(factor.numpy()[mask == 0] == 0)
    ens = {layer.name: layer for layer in model.ensemble.layers}
    for layer, mask in zip(model.reparam, masks, strict=True):
        assert np.all(ens[layer.name].kernel.numpy()[mask == 0] == 0)
    if structured:
        kept = [m.reshape(-1, m.shape[-1])[0] for m in masks[:-1]]
        assert 0.15 <= 1 - np.mean(np.concatenate(kept)) <= 0.85
    else:
        assert kernel_sparsity(model.ensemble)["kernels"] >= 0.8 - 1e-6


def test_gradual_schedule_only_grows_masks():
    schedule = make_schedule("gradual", 0.9, begin_step=0, end_step=4, frequency=2)
    assert [round(float(schedule(s)[1]), 3) for s in (0, 2, 4)] == [0.0, 0.787, 0.9]
    assert [bool(schedule(s)[0]) for s in (0, 1, 2, 3, 4, 5)] == [True, False, True, False, True, False]
