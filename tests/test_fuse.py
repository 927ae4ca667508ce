"""fuse(): standard layers only, identical outputs, for every architecture x parameterization."""

import numpy as np
import pytest

from frep_tf.fuse import fuse
from frep_tf.layers import PARAMETERIZATIONS, reparam_layers
from frep_tf.models import ARCHITECTURES, build_model


def randomize(model, keep=0.5, seed=0):
    """Random masks, factor scales and BatchNorm statistics, so fusion is tested on non-trivial weights."""
    rng = np.random.default_rng(seed)
    for layer in reparam_layers(model):
        layer.mask.assign((rng.random(layer.mask.shape) < keep).astype("float32"))
    for layer in model.layers:
        if layer.__class__.__name__ == "BatchNormalization":
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fused_model_matches_reparameterized(arch, parameterization):
    shape = (8, 8, 1) if arch == "small_cnn" else (32, 32, 3)
    model = build_model(arch, input_shape=shape, parameterization=parameterization, width=0.125)
    randomize(model)
    fused = fuse(model)
    x = np.random.default_rng(1).random((4, *shape)).astype("float32")
    ref = model(x, training=False).numpy()
    out = fused(x, training=False).numpy()
    assert np.abs(ref).max() > 1e-3  # outputs are not trivially zero
    assert np.abs(out - ref).max() <= 1e-4
    for layer in fused.layers:
        assert layer.__class__.__module__.startswith("keras."), layer
        assert "mask" not in [w.name for w in layer.weights]
    assert [layer.name for layer in fused.layers] == [layer.name for layer in model.layers]


def test_fused_kernels_keep_exact_zeros():
    model = build_model("small_cnn", input_shape=(8, 8, 1), parameterization="hadamard")
    randomize(model, keep=0.1)
    fused = fuse(model)
    for layer in reparam_layers(model):
        kernel = fused.get_layer(layer.name).kernel.numpy()
        np.testing.assert_array_equal(kernel == 0, layer.mask.numpy() == 0)
