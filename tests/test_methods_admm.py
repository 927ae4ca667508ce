"""ADMM: the Z projection, the U update and the rho schedule against numpy; exact hard pruning."""

import keras
import numpy as np
import tensorflow as tf

from frep_tf.layers.reparam import ReparamConv2D, ReparamDense, reparam_layers
from frep_tf.methods import admm
from frep_tf.models import build_model


def _np_project(v, keep):
    """Numpy reference: zero all but the `keep` largest |v| (values kept)."""
    out = np.zeros_like(v)
    index = np.argsort(-np.abs(v).ravel(), kind="stable")[:keep]
    out.ravel()[index] = v.ravel()[index]
    return out


def test_projection_keeps_the_top_k_magnitudes_exactly():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    z = admm.project(v, 7).numpy()
    np.testing.assert_array_equal(z, _np_project(v, 7))
    assert np.count_nonzero(z) == 7
    ties = np.ones((4, 5), np.float32)  # a percentile threshold would keep all or nothing here
    assert np.count_nonzero(admm.project(ties, 3).numpy()) == 3


def test_init_updates_and_rho_schedule_match_numpy():
    rng = np.random.default_rng(1)
    shapes = [(3, 3, 2, 4), (3, 3, 4, 4)]
    state = admm.ADMMState(shapes, 0.75, rho=1e-3, admm_epoch=2)
    keeps = [round(0.25 * np.prod(s)) for s in shapes]
    assert state.keeps == keeps
    weights = [rng.normal(size=s).astype(np.float32) for s in shapes]
    state.catch_up(0, lambda: weights)  # epoch 0: Z = proj(W), U = 0, no update
    z = [_np_project(w, k) for w, k in zip(weights, keeps, strict=True)]
    u = [np.zeros_like(w) for w in weights]
    rho = 1e-3
    for i in range(2):
        np.testing.assert_allclose(np.asarray(state.z[i]), z[i])
        np.testing.assert_array_equal(np.asarray(state.u[i]), 0.0)
    for epoch in range(1, 7):
        weights = [w + 0.1 * rng.normal(size=w.shape).astype(np.float32) for w in weights]
        state.catch_up(epoch, lambda w=weights: w)
        if epoch % 2 == 0:  # numpy reference, in the original's order: rho, then Z, then U
            rho *= 1.3
            z = [_np_project(w + uu, k) for w, uu, k in zip(weights, u, keeps, strict=True)]
            u = [uu + w - zz for uu, w, zz in zip(u, weights, z, strict=True)]
        for i in range(2):
            np.testing.assert_allclose(np.asarray(state.z[i]), z[i], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(np.asarray(state.u[i]), u[i], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.asarray(state.rho), [rho, rho], rtol=1e-6)
    assert int(state.updates.numpy()) == 3
    # A resumed stage calling catch_up again at the same epoch changes nothing.
    state.catch_up(6, lambda: weights)
    assert int(state.updates.numpy()) == 3
    np.testing.assert_allclose(np.asarray(state.z[0]), z[0], rtol=1e-6, atol=1e-7)
    # The augmented loss term, against numpy.
    expected = sum(0.5 * rho * np.sum((w - zz + uu) ** 2) for w, zz, uu in zip(weights, z, u, strict=True))
    np.testing.assert_allclose(state.penalty(weights).numpy(), expected, rtol=1e-5)


def test_penalty_is_differentiable_inside_a_step_and_pulls_w_towards_z_minus_u():
    keras.utils.set_random_seed(0)
    layer = ReparamConv2D(3, 3, parameterization="plain")
    layer(tf.zeros((1, 5, 5, 2)))
    state = admm.ADMMState.for_layers([layer], 0.5, rho=0.5)
    state.initialize([layer.fused_kernel()])
    with tf.GradientTape() as tape:
        value = state.penalty([layer.fused_kernel()])
    grad = tape.gradient(value, layer.kernel)
    w = np.asarray(layer.kernel)
    np.testing.assert_allclose(grad.numpy(), 0.5 * (w - np.asarray(state.z[0])), rtol=1e-5, atol=1e-7)


def test_state_is_in_the_model_variables_so_checkpoints_carry_it():
    model = build_model("small_cnn", input_shape=(8, 8, 1), parameterization="plain", width=0.25)
    layers = admm.admm_layers(reparam_layers(model))
    # Every prunable kernel, the classifier included: the exported model meets the same global budget as
    # every other method (the original leaves the classifier dense).
    assert [layer.name for layer in layers] == [layer.name for layer in reparam_layers(model)]
    assert any(isinstance(layer, ReparamDense) for layer in layers)
    assert any(isinstance(layer, ReparamConv2D) for layer in layers)
    state = admm.ADMMState.for_layers(layers, 0.9)
    holder = keras.Model(model.inputs, model.outputs)
    holder.admm = state
    paths = {v.path for v in holder.variables}
    assert {v.path for v in state.variables} <= paths
    assert not state.trainable_variables


def test_hard_pruning_gives_exact_per_layer_sparsity():
    keras.utils.set_random_seed(0)
    model = build_model("small_cnn", input_shape=(8, 8, 1), parameterization="plain", width=0.25)
    layers = admm.admm_layers(reparam_layers(model))
    before = [np.asarray(layer.kernel) for layer in layers]
    admm.hard_prune(layers, 0.9)
    for layer, w in zip(layers, before, strict=True):
        kernel = np.asarray(layer.fused_kernel())
        assert np.count_nonzero(kernel) == round(0.1 * w.size)
        np.testing.assert_array_equal(kernel, _np_project(w, round(0.1 * w.size)))
        np.testing.assert_array_equal(np.asarray(layer.kernel)[np.asarray(layer.mask) == 0], 0.0)


def test_state_config_round_trip():
    state = admm.ADMMState([(3, 3, 1, 2)], 0.5, rho=0.01, rho_factor=1.5, admm_epoch=3, layer_names=["conv1"])
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(state))
    assert (clone.keeps, clone.rho0, clone.rho_factor, clone.admm_epoch) == ([9], 0.01, 1.5, 3)
    assert [v.path for v in clone.variables] == [v.path for v in state.variables]


def test_penalty_inside_tf_function_equals_eager():
    keras.utils.set_random_seed(1)
    model = build_model("small_cnn", input_shape=(8, 8, 1), parameterization="plain", width=0.25)
    layers = admm.admm_layers(reparam_layers(model))
    state = admm.ADMMState.for_layers(layers, 0.8, rho=0.1)
    state.initialize([layer.fused_kernel() for layer in layers])
    state.update([layer.fused_kernel() * 1.1 for layer in layers])  # U != 0
    compiled = tf.function(lambda: state.penalty([layer.fused_kernel() for layer in layers]))
    eager = state.penalty([layer.fused_kernel() for layer in layers])
    np.testing.assert_allclose(compiled().numpy(), eager.numpy(), rtol=1e-6)
    assert eager.numpy() > 0
