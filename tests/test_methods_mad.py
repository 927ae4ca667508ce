"""MAD: the K-FAC statistics and the saliency formula on a tiny dense layer and a tiny conv vs numpy."""

import math

import keras
import numpy as np
import tensorflow as tf

from frep_tf.layers.reparam import ReparamConv2D, ReparamDense
from frep_tf.methods import mad


def _np_saliency_rows(delta, a, g_diag):
    """The original's loop (torch layout: rows are output units): diag(1/2 G_ii dW_i^T (dW_i A))."""
    rows = delta.T  # (out, n)
    out = np.empty_like(rows)
    for i in range(rows.shape[0]):
        block = (0.5 * g_diag[i] * rows[i][:, None]) @ (rows[i][None, :] @ a)
        out[i] = np.diag(block)
    return out.T


def _np_same_patches(x, k, s):
    """im2col with TF's SAME padding, rows ordered (kh, kw, in) like a Keras kernel."""
    b, h, w, c = x.shape
    oh, ow = -(-h // s), -(-w // s)
    ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    rows = [
        xp[n, i * s : i * s + k, j * s : j * s + k, :].ravel() for n in range(b) for i in range(oh) for j in range(ow)
    ]
    return np.array(rows), oh * ow


def test_dense_saliency_matches_the_original_formula():
    rng = np.random.default_rng(0)
    layer = ReparamDense(3, parameterization="plain")
    x = rng.normal(size=(5, 4)).astype(np.float32)
    layer(x)
    g = rng.normal(size=(5, 3)).astype(np.float32)  # d(batch-mean loss)/d outputs
    delta = rng.normal(size=(4, 3)).astype(np.float32)
    got = mad.layer_saliency(layer, x, layer(x), g, delta).numpy()
    a = x.T @ x / 5  # ComputeCovA.linear
    g_diag = np.diag(g.T @ (g * 5))  # ComputeCovG.linear, batch averaged
    np.testing.assert_allclose(got, _np_saliency_rows(delta, a, g_diag), rtol=1e-5, atol=1e-7)


def test_conv_patches_are_what_the_layer_multiplies():
    rng = np.random.default_rng(1)
    layer = ReparamConv2D(4, 3, strides=2, padding="same", parameterization="plain", use_bias=False)
    x = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
    y = layer(x).numpy()
    patches = mad.input_patches(layer, x).numpy()
    np_patches, positions = _np_same_patches(x, 3, 2)
    np.testing.assert_allclose(patches, np_patches, rtol=1e-6)
    kernel = np.asarray(layer.kernel).reshape(-1, 4)
    np.testing.assert_allclose(patches @ kernel, y.reshape(-1, 4), rtol=1e-4, atol=1e-5)
    assert positions == 9


def test_conv_saliency_matches_numpy_kfac_and_the_original_formula():
    rng = np.random.default_rng(2)
    layer = ReparamConv2D(4, 3, strides=2, padding="same", parameterization="plain", use_bias=False)
    x = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
    y = layer(x)
    g = rng.normal(size=y.shape).astype(np.float32)
    delta = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    got = mad.layer_saliency(layer, x, y, g, delta).numpy()
    p, s = _np_same_patches(x, 3, 2)
    a = (p / s).T @ (p / s / 2)  # ComputeCovA.conv2d
    gg = g.reshape(-1, 4) * 2 * s  # ComputeCovG.conv2d, batch averaged
    g_diag = np.diag(gg.T @ (gg / gg.shape[0]))
    want = _np_saliency_rows(delta.reshape(-1, 4), a, g_diag).reshape(delta.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(mad.input_factor(layer, x, y).numpy(), a, rtol=1e-5, atol=1e-7)


def test_explicit_a_and_matrix_free_a_agree():
    rng = np.random.default_rng(3)
    layer = ReparamConv2D(2, 3, parameterization="plain", use_bias=False)
    x = rng.normal(size=(3, 6, 6, 4)).astype(np.float32)
    y = layer(x)
    delta = tf.constant(rng.normal(size=(36, 2)).astype(np.float32))
    explicit = tf.matmul(mad.input_factor(layer, x, y), delta).numpy()
    a = mad.input_patches(layer, x)
    matrix_free = (tf.matmul(a, tf.matmul(a, delta), transpose_a=True) / (3 * 36 * 36)).numpy()
    np.testing.assert_allclose(explicit, matrix_free, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mad.input_factor_times(layer, x, y, delta).numpy(), explicit, rtol=1e-4, atol=1e-6)


def _np_softplus(v):
    return np.log1p(np.exp(v))


def test_one_batch_end_to_end_on_a_dense_network_matches_numpy():
    """Soft-mask Adam steps, then K-FAC at the optimised masks, then the saliency: all vs numpy."""
    rng = np.random.default_rng(4)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    head = ReparamDense(4, parameterization="plain", name="head")
    network = keras.Model(inputs, head(inputs))
    head.kernel.assign(rng.normal(size=(6, 4)).astype(np.float32))
    head.bias.assign(rng.normal(size=4).astype(np.float32) * 0.1)
    x = rng.normal(size=(8, 6)).astype(np.float32)
    y = rng.integers(0, 4, size=8).astype(np.int32)
    steps, lr = 3, 0.1
    sal = mad.SaliencyPass(network, [head], steps=steps, learning_rate=lr).batch(x, y)[0].numpy()

    w, b = np.asarray(head.kernel, np.float64), np.asarray(head.bias, np.float64)
    onehot = np.eye(4)[y]

    def output_grad(mask):
        logits = x @ (w * mask) + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return (p - onehot) / len(x)  # d mean CE / d logits

    m = np.full(w.shape, math.log(math.e - 1))
    first, second = np.zeros_like(m), np.zeros_like(m)
    for t in range(1, steps + 1):
        grad_mask = (x.T @ output_grad(_np_softplus(m))) * w
        grad = grad_mask / (1 + np.exp(-m))  # d softplus / dm = sigmoid
        first = 0.9 * first + 0.1 * grad
        second = 0.999 * second + 0.001 * grad**2
        m = m - lr * (first / (1 - 0.9**t)) / (np.sqrt(second / (1 - 0.999**t)) + 1e-8)
        m = np.clip(m, math.log(math.expm1(1e-4)), math.log(math.e - 1))
    soft = _np_softplus(m)
    g = output_grad(soft)
    a = x.T @ x / len(x)
    g_diag = len(x) * np.sum(g**2, axis=0)
    want = _np_saliency_rows(w - w * soft, a, g_diag)
    np.testing.assert_allclose(sal, want, rtol=2e-3, atol=1e-8)
    assert np.any(soft < 0.999)  # the masks did move
    np.testing.assert_array_equal(np.asarray(head.mask), 1.0)  # binary masks restored after the batch


def test_average_over_batches_and_pruning_rules():
    avg = mad.SaliencyAverage([(2, 3), (3, 2)])
    avg.add([np.ones((2, 3)), np.full((3, 2), 2.0)])
    avg.add([np.zeros((2, 3)), np.zeros((3, 2))])
    np.testing.assert_allclose(avg.mean()[1], np.ones((3, 2)))
    rng = np.random.default_rng(5)
    body = [rng.normal(size=(3, 3, 2, 4)), rng.normal(size=(3, 3, 4, 4)) * 10]
    head = rng.normal(size=(8, 5))
    masks = mad.saliency_masks([*body, head], 0.75)
    flat = np.concatenate([s.ravel() for s in body])
    keep = round(0.25 * flat.size)
    threshold = np.sort(flat)[::-1][keep - 1]
    for s, mask in zip(body, masks[:2], strict=True):  # one global threshold over the conv layers
        np.testing.assert_array_equal(mask, (s >= threshold).astype(np.float32))
    assert sum(int(mm.sum()) for mm in masks[:2]) == keep
    np.testing.assert_array_equal(masks[2].sum(axis=0), [2] * 5)  # the head: per output unit
    for i in range(5):
        col = head[:, i]
        np.testing.assert_array_equal(masks[2][:, i], (col >= np.sort(col)[-2]).astype(np.float32))


def test_a_conv_network_pass_leaves_the_network_as_it_was():
    from frep_tf.layers.reparam import reparam_layers
    from frep_tf.models import build_model

    keras.utils.set_random_seed(0)
    network = build_model("small_cnn", input_shape=(8, 8, 1), parameterization="plain", width=0.25)
    layers = reparam_layers(network)
    before = [np.array(v) for v in network.variables]
    x = tf.random.stateless_uniform((6, 8, 8, 1), seed=(0, 1))
    y = tf.constant([0, 1, 2, 3, 4, 5])
    saliencies = mad.SaliencyPass(network, layers, steps=2).batch(x, y)
    for layer, s in zip(layers, saliencies, strict=True):
        assert s.shape == layer.kernel.shape and np.all(np.isfinite(s.numpy()))
    assert all(np.any(s.numpy() != 0) for s in saliencies)
    for b, v in zip(before, network.variables, strict=True):  # masks restored, BatchNorm statistics kept
        np.testing.assert_array_equal(b, np.asarray(v))
    # No mask step: softplus(m) = 1, nothing is removed, every saliency is zero.
    untouched = mad.SaliencyPass(network, layers, steps=0).batch(x, y)
    assert all(np.all(s.numpy() == 0) for s in untouched)


def test_saliency_average_config_round_trip():
    avg = mad.SaliencyAverage([(3, 3, 1, 2)], layer_names=["conv1"])
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(avg))
    assert [v.path for v in clone.variables] == [v.path for v in avg.variables]
    assert not clone.trainable_variables


def test_already_pruned_weights_have_no_saliency_and_stay_pruned():
    rng = np.random.default_rng(6)
    inputs = keras.Input((6,))
    head = ReparamDense(4, parameterization="plain", name="head")
    network = keras.Model(inputs, head(inputs))
    saliency_pass = mad.SaliencyPass(network, [head], steps=3)
    pruned = (rng.uniform(size=(6, 4)) > 0.5).astype(np.float32)
    head.mask.assign(pruned)  # pruned after the pass was built: the pass must see it
    x = rng.normal(size=(8, 6)).astype(np.float32)
    s = saliency_pass.batch(x, rng.integers(0, 4, size=8).astype(np.int32))[0].numpy()
    assert np.all(s[pruned == 0] == 0) and np.any(s[pruned == 1] != 0)
    np.testing.assert_array_equal(np.asarray(head.mask), pruned)


def test_both_branches_of_a_times_delta_are_exercised():
    rng = np.random.default_rng(7)
    layer = ReparamDense(8, parameterization="plain")
    x = rng.normal(size=(10, 2)).astype(np.float32)
    y = layer(x)
    delta = rng.normal(size=(2, 8)).astype(np.float32)
    assert mad._explicit_is_cheaper(10, 2, 8) and not mad._explicit_is_cheaper(10, 36, 2)
    np.testing.assert_allclose(
        mad.input_factor_times(layer, x, y, tf.constant(delta)).numpy(), (x.T @ x / 10) @ delta, rtol=1e-5, atol=1e-6
    )
