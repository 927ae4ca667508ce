"""HYDRA: scaled score init (first mask = per-layer magnitude mask), exact k, straight-through gradient."""

import keras
import numpy as np
import tensorflow as tf

from frep_tf.layers.reparam import reparam_layers
from frep_tf.methods import hydra
from frep_tf.models import build_model


def _model():
    keras.utils.set_random_seed(0)
    return build_model("small_cnn", input_shape=(8, 8, 1), parameterization="plain", width=0.25)


def _np_magnitude_mask(w, keep):
    mask = np.zeros(w.size, np.float32)
    mask[np.argsort(-np.abs(w).ravel(), kind="stable")[:keep]] = 1.0
    return mask.reshape(w.shape)


def test_scaled_init_matches_numpy_and_first_mask_is_the_magnitude_mask():
    model = _model()
    layers = reparam_layers(model)
    scores = hydra.HydraScores.for_layers(layers, 0.8)
    scores.initialize([layer.fused_kernel() for layer in layers])
    for layer, s, keep, mask in zip(layers, scores.scores, scores.keeps, scores.masks(), strict=True):
        w = np.asarray(layer.kernel)
        fan_in = int(np.prod(w.shape[:-1]))
        np.testing.assert_allclose(np.asarray(s), np.sqrt(6.0 / fan_in) * w / np.abs(w).max(), rtol=1e-6)
        assert keep == round(0.2 * w.size)
        assert int(mask.numpy().sum()) == keep  # exact k per layer
        np.testing.assert_array_equal(mask.numpy(), _np_magnitude_mask(w, keep))


def test_exact_k_per_layer_even_with_tied_scores():
    scores = hydra.HydraScores([(3, 3, 2, 4), (5, 3)], 0.5)
    for s in scores.scores:
        s.assign(tf.ones_like(s))  # all tied
    assert [int(m.numpy().sum()) for m in scores.masks()] == [36, 8]


def test_straight_through_gradient_is_the_identity_to_abs_scores():
    values = tf.constant([[0.3, -2.0, 1.0], [0.1, 0.5, -0.2]])
    upstream = tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(values)
        mask = hydra.straight_through_topk(tf.abs(values), 2)
        total = tf.reduce_sum(mask * upstream)
    np.testing.assert_array_equal(mask.numpy(), [[0, 1, 1], [0, 0, 0]])  # forward: exact top-2 of |v|
    np.testing.assert_array_equal(tape.gradient(total, values).numpy(), upstream.numpy() * np.sign(values.numpy()))


def test_a_score_step_gets_the_straight_through_gradient_of_a_real_forward_pass():
    model = _model()
    layers = reparam_layers(model)
    head = layers[-1]
    scores = hydra.HydraScores.for_layers(layers, 0.5)
    scores.initialize([layer.fused_kernel() for layer in layers])
    hydra.freeze_weights(layers)
    assert all(not v.trainable for layer in layers for v in layer.prunable_weights())
    x = tf.random.stateless_uniform((4, 8, 8, 1), seed=(1, 2))
    scores.assign_masks(layers)
    carriers = [layer.mask.value for layer in layers]
    features = keras.Model(model.inputs, head.input)(x, training=False)
    with tf.GradientTape() as tape:
        tape.watch(carriers)
        loss = tf.reduce_sum(tf.square(model(x, training=False)))
    mask_grads = tape.gradient(loss, carriers)
    score_grads = scores.score_gradients(mask_grads)
    # numpy reference for the head: logits = f (W * m) + b, d loss/d m = W * f^T (2 logits), times sign(s).
    w, b = np.asarray(head.kernel), np.asarray(head.bias)
    m = np.asarray(head.mask)
    f = features.numpy()
    logits = f @ (w * m) + b
    expected = w * (f.T @ (2 * logits)) * np.sign(np.asarray(scores.scores[-1]))
    np.testing.assert_allclose(score_grads[-1].numpy(), expected, rtol=1e-4, atol=1e-6)
    assert all(g is not None and np.any(g.numpy() != 0) for g in score_grads)
    # The weights are untouched during score learning (no projection), so a masked weight can return.
    assert np.count_nonzero(np.asarray(head.kernel)) == head.kernel.shape[0] * head.kernel.shape[1]


def test_fixed_masks_for_finetuning_follow_the_learnt_scores():
    model = _model()
    layers = reparam_layers(model)
    scores = hydra.HydraScores.for_layers(layers, 0.75)
    scores.initialize([layer.fused_kernel() for layer in layers])
    scores.assign_masks(layers)  # as during score learning: the layers carry the mask of an older step
    rng = np.random.default_rng(3)
    for s in scores.scores:
        s.assign(rng.normal(size=s.shape).astype(np.float32))  # "learnt": no longer the magnitude order
    expected = [_np_magnitude_mask(np.asarray(s), k) for s, k in zip(scores.scores, scores.keeps, strict=True)]
    masks = scores.fixed_masks(layers)
    for layer, mask, want in zip(layers, masks, expected, strict=True):
        np.testing.assert_array_equal(mask, want)
        np.testing.assert_array_equal(np.asarray(layer.mask), want)
        np.testing.assert_array_equal(np.asarray(layer.kernel)[want == 0], 0.0)  # projected for finetuning


def test_scores_config_round_trip():
    scores = hydra.HydraScores([(3, 3, 1, 2), (4, 3)], 0.5, layer_names=["conv1", "head"])
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(scores))
    assert clone.keeps == scores.keeps == [9, 6]
    assert [v.path for v in clone.trainable_variables] == [v.path for v in scores.trainable_variables]


def test_score_learning_steps_run_inside_tf_function():
    """The shape of the stage's train step: masks from scores, forward, straight-through, update."""
    model = _model()
    layers = reparam_layers(model)
    scores = hydra.HydraScores.for_layers(layers, 0.5)
    scores.initialize([layer.fused_kernel() for layer in layers])
    hydra.freeze_weights(layers)
    kernels = [np.asarray(layer.kernel) for layer in layers]
    first = [m.numpy() for m in scores.masks()]
    optimizer = keras.optimizers.SGD(1.0)
    optimizer.build(scores.trainable_variables)
    x = tf.random.stateless_uniform((16, 8, 8, 1), seed=(3, 4))
    y = tf.range(16) % 10

    @tf.function
    def step():
        scores.assign_masks(layers)
        carriers = [layer.mask.value for layer in layers]
        with tf.GradientTape() as tape:
            tape.watch(carriers)
            logits = model(x, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        grads = scores.score_gradients(tape.gradient(loss, carriers))
        optimizer.apply(grads, scores.trainable_variables)
        return loss

    for _ in range(3):
        step()
    assert any(np.any(m.numpy() != f) for m, f in zip(scores.masks(), first, strict=True))  # masks moved
    assert [int(m.numpy().sum()) for m in scores.masks()] == scores.keeps
    for layer, w in zip(layers, kernels, strict=True):
        np.testing.assert_array_equal(np.asarray(layer.kernel), w)  # weights frozen
