"""Reparameterized layers: numpy references, the paper's Eq. 7, serialization, argument errors."""

import itertools

import keras
import numpy as np
import pytest

from frep_tf.layers import FACTOR_INITS, PARAMETERIZATIONS, ReparamConv2D, ReparamDense, make_layers


def _np_kernel(layer):
    mask = layer.mask.numpy()
    if layer.parameterization == "hadamard":
        return layer.factor_a.numpy() * layer.factor_b.numpy() * mask
    if layer.parameterization == "channel":
        b, mix = layer.factor_b.numpy(), layer.mix.numpy()
        return np.einsum("...e,ed->...d", b, mix) * mask
    return layer.kernel.numpy() * mask


def _np_conv_same(x, k, stride):
    """Naive NHWC convolution with TF's 'same' padding."""
    n, h, w, _ = x.shape
    kh, kw, _, f = k.shape
    oh, ow = -(-h // stride), -(-w // stride)
    pad_h = max((oh - 1) * stride + kh - h, 0)
    pad_w = max((ow - 1) * stride + kw - w, 0)
    xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out = np.zeros((n, oh, ow, f))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j, :] = np.tensordot(patch, k, axes=([1, 2, 3], [0, 1, 2]))
    return out


def _random_mask(layer, keep, seed=0):
    rng = np.random.default_rng(seed)
    layer.mask.assign((rng.random(layer.mask.shape) < keep).astype("float32"))


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_matches_numpy_reference(parameterization, stride):
    rng = np.random.default_rng(1)
    x = rng.random((2, 5, 6, 3)).astype("float32")
    layer = ReparamConv2D(4, 3, strides=stride, use_bias=True, parameterization=parameterization)
    layer.build(x.shape)
    _random_mask(layer, keep=0.6)
    layer.bias.assign(rng.normal(size=4).astype("float32"))
    expected = _np_conv_same(x.astype("float64"), _np_kernel(layer).astype("float64"), stride) + layer.bias.numpy()
    np.testing.assert_allclose(layer(x).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(layer.fused_kernel().numpy(), _np_kernel(layer), atol=1e-6)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_dense_matches_numpy_reference(parameterization):
    rng = np.random.default_rng(2)
    x = rng.random((3, 7)).astype("float32")
    layer = ReparamDense(5, parameterization=parameterization)
    layer.build(x.shape)
    _random_mask(layer, keep=0.5)
    np.testing.assert_allclose(layer(x).numpy(), x @ _np_kernel(layer), atol=1e-5)


def test_channel_mask_zeroes_whole_output_channels():
    layer = ReparamConv2D(4, 3, parameterization="channel")
    layer.build((1, 4, 4, 2))
    mask = np.ones(layer.mask.shape, "float32")
    mask[..., 1] = 0
    layer.mask.assign(mask)
    assert np.all(layer.fused_kernel().numpy()[..., 1] == 0)
    assert np.all(layer.fused_kernel().numpy()[..., 0] != 0)


def test_factor_inits():
    shape = (1, 6, 6, 3)
    equal = ReparamConv2D(8, parameterization="hadamard", factor_init="equal")
    equal.build(shape)
    np.testing.assert_array_equal(equal.factor_b.numpy(), np.abs(equal.factor_a.numpy()))
    ones = ReparamConv2D(8, parameterization="hadamard", factor_init="ones")
    ones.build(shape)
    np.testing.assert_array_equal(ones.factor_b.numpy(), 1.0)
    rand = ReparamConv2D(8, parameterization="hadamard", factor_init="random")
    rand.build(shape)
    assert not np.allclose(rand.factor_a.numpy(), rand.factor_b.numpy())
    assert np.mean(rand.factor_b.numpy() < 0) > 0.3  # both factors drawn like a plain kernel
    identity = ReparamDense(4, parameterization="channel", factor_init="ones")
    identity.build((1, 3))
    np.testing.assert_array_equal(identity.mix.numpy(), np.eye(4))


def test_eq7_hadamard_update_scales_learning_rate_by_magnitude():
    """With |A| = |B|, one SGD step on (A, B) moves W = A*B by -2*lr*|W|*grad_W to first order."""
    rng = np.random.default_rng(3)
    layer = ReparamDense(6, use_bias=False, parameterization="hadamard", factor_init="equal")
    x = rng.normal(size=(16, 5)).astype("float32")
    target = rng.normal(size=(16, 6)).astype("float32")
    layer.build(x.shape)
    import tensorflow as tf

    w0 = layer.fused_kernel().numpy().astype("float64")
    w_var = tf.Variable(w0.astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((x @ w_var - target) ** 2)
    grad_w = tape.gradient(loss, w_var).numpy().astype("float64")

    lr = 1e-3
    optimizer = keras.optimizers.SGD(learning_rate=lr)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((layer(x) - target) ** 2)
    variables = layer.trainable_variables
    optimizer.apply(tape.gradient(loss, variables), variables)
    moved = layer.fused_kernel().numpy() - w0
    predicted = -2 * lr * np.abs(w0) * grad_w
    # Second-order remainder is lr^2 * g^2 * |W|: tiny against the first-order move.
    np.testing.assert_allclose(moved, predicted, atol=1e-7, rtol=1e-2)
    assert np.abs(predicted).max() > 1e-5  # the check is not vacuous
    np.testing.assert_allclose(np.abs(layer.factor_a.numpy()), np.abs(layer.factor_b.numpy()), rtol=1e-6)


CONV_ARGS = [
    dict(filters=3, kernel_size=3, strides=1, padding="same", use_bias=False),
    dict(filters=2, kernel_size=(1, 3), strides=(2, 1), padding="valid", use_bias=True),
]


@pytest.mark.parametrize(
    "parameterization,factor_init,args", list(itertools.product(PARAMETERIZATIONS, FACTOR_INITS, CONV_ARGS))
)
def test_conv_serialization_round_trip(parameterization, factor_init, args, tmp_path):
    layer = ReparamConv2D(
        **args, parameterization=parameterization, factor_init=factor_init, kernel_initializer="glorot_uniform"
    )
    clone = ReparamConv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    _round_trip_model(layer, (6, 6, 2), tmp_path)


@pytest.mark.parametrize("parameterization,factor_init", list(itertools.product(PARAMETERIZATIONS, FACTOR_INITS)))
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_serialization_round_trip(parameterization, factor_init, use_bias, tmp_path):
    layer = ReparamDense(3, use_bias=use_bias, parameterization=parameterization, factor_init=factor_init)
    clone = ReparamDense.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    _round_trip_model(layer, (4,), tmp_path)


def _round_trip_model(layer, shape, tmp_path):
    inputs = keras.Input(shape)
    model = keras.Model(inputs, layer(inputs))
    _random_mask(layer, keep=0.5, seed=4)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(5).random((2, *shape)).astype("float32")
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)
    loaded_layer = loaded.layers[-1]
    assert type(loaded_layer) is type(layer)
    np.testing.assert_array_equal(loaded_layer.mask.numpy(), layer.mask.numpy())
    assert not loaded_layer.mask.trainable


def test_factory_builds_each_parameterization():
    for p in PARAMETERIZATIONS:
        f = make_layers(p)
        conv = f.conv(4, 3, 2, name="c")
        dense = f.dense(2, name="d")
        assert conv.parameterization == dense.parameterization == p
        assert conv.name == "c" and dense.name == "d"


def test_prunable_weights_and_projection():
    layer = ReparamConv2D(4, parameterization="hadamard")
    layer.build((1, 5, 5, 2))
    assert [v.name for v in layer.prunable_weights()] == ["factor_a", "factor_b"]
    _random_mask(layer, keep=0.3)
    layer.project_factors()
    dead = layer.mask.numpy() == 0
    assert np.all(layer.factor_a.numpy()[dead] == 0) and np.all(layer.factor_b.numpy()[dead] == 0)
    assert np.all(layer.factor_a.numpy()[~dead] != 0)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: ReparamConv2D(4, parameterization="lowrank"), "parameterization.*hadamard, channel, plain"),
        (lambda: ReparamConv2D(4, factor_init="zeros"), "factor_init.*random, equal, ones"),
        (lambda: ReparamConv2D(0), "filters=0"),
        (lambda: ReparamConv2D(4, kernel_size=(3, 3, 3)), "kernel_size"),
        (lambda: ReparamConv2D(4, padding="full"), "padding.*same, valid"),
        (lambda: ReparamDense(-2), "units=-2"),
        (lambda: make_layers("magic"), "parameterization"),
    ],
)
def test_bad_arguments_raise_one_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
