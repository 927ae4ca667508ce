"""RobustModel's train_step and the temporal ensemble."""

import keras
import numpy as np
import pytest

from frep_tf.config import OBJECTIVES
from frep_tf.layers import ReparamConv2D, ReparamDense
from frep_tf.models import build_model
from frep_tf.training.ensemble import TemporalEnsemble, interval_at, tau_at
from frep_tf.training.robust_model import RobustModel


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1)).astype("float32"), rng.integers(0, 10, n).astype("int32")


def _model(objective="sre", **kwargs):
    net = build_model("small_cnn", input_shape=(8, 8, 1), width=0.25)
    model = RobustModel(net, objective=objective, epsilon=0.1, pgd_steps=2, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return model


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_trains(objective):
    keras.utils.set_random_seed(0)
    model = _model(objective)
    x, y = _data()
    before = [v.numpy().copy() for v in model.network.trainable_variables]
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert ("clean_acc" in history.history) == (objective in ("sre", "trades", "mart", "natural"))
    assert ("adv_acc" in history.history) == (objective != "natural")
    moved = [not np.allclose(b, v.numpy()) for b, v in zip(before, model.network.trainable_variables, strict=True)]
    assert all(moved)


def test_perturbation_stays_in_the_eps_ball():
    keras.utils.set_random_seed(0)
    for objective in ("sre", "fgsm", "pgd", "trades"):
        model = _model(objective)
        x, y = _data(8)
        import tensorflow as tf

        logits = model.network(x, training=True)
        x_adv = model._perturb(tf.constant(x), tf.constant(y), logits).numpy()
        assert np.abs(x_adv - x).max() <= 0.1 + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        # Random-start objectives move by up to eps; TRADES starts next to x and takes 2 steps of 2/255.
        assert np.abs(x_adv - x).max() > (0.01 if objective == "trades" else 0.05)


def test_weight_decay_is_coupled_l2():
    """With a zero loss gradient, one plain SGD step shrinks every weight by lr * wd (PyTorch semantics)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    net = keras.Model(inputs, ReparamDense(2, parameterization="plain", use_bias=False)(inputs))
    model = RobustModel(net, objective="natural", weight_decay=0.1, ensemble=False)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    w0 = net.layers[-1].kernel.numpy().copy()
    model.fit(np.zeros((4, 3), "float32"), np.zeros(4, "int32"), batch_size=4, epochs=1, verbose=0)
    np.testing.assert_allclose(net.layers[-1].kernel.numpy(), w0 * (1 - 0.5 * 0.1), rtol=1e-5)


def test_tau_and_interval_schedules():
    assert tau_at(0, 0.99, 10) == 0.0  # the first update copies the model (Algorithm 1, line 1)
    assert tau_at(10, 0.99, 10) == 0.5
    assert tau_at(10_000, 0.99, 10) == 0.99
    assert [interval_at(s, 100, (700, 850)) for s in (0, 699, 700, 849, 850)] == [100, 100, 1000, 1000, 10000]


def test_ensemble_is_the_ema_of_fused_weights():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = ReparamConv2D(3, parameterization="hadamard", name="c")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    net = keras.Model(inputs, ReparamDense(10, name="d")(h))
    model = RobustModel(net, objective="sre", epsilon=0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = _data(16)
    ens = TemporalEnsemble(decay=0.5, warmup=1.0, interval=2)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(
                (
                    net.get_layer("c").fused_kernel().numpy().copy(),
                    net.get_layer("bn").moving_mean.numpy().copy(),
                )
            )

    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[Record(), ens])  # 4 steps -> updates after 2, 4
    # Expected: i=0 copy at step 2 (tau=0); i=1 at step 4 with tau=min(0.5, 1/2)=0.5.
    k2, m2 = seen[1]
    k4, m4 = seen[3]
    np.testing.assert_allclose(model.ensemble.get_layer("c").kernel.numpy(), 0.5 * k2 + 0.5 * k4, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(model.ensemble.get_layer("bn").moving_mean.numpy(), 0.5 * m2 + 0.5 * m4, rtol=1e-5)
    assert int(model.ensemble_updates.numpy()) == 2
    assert all(not w.trainable for w in model.ensemble.weights)
    assert not any(w is v for w in model.trainable_variables for v in model.ensemble.weights)


def test_ensemble_state_is_in_checkpointed_variables(tmp_path):
    keras.utils.set_random_seed(0)
    model = _model()
    x, y = _data(16)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[TemporalEnsemble(decay=0.9, warmup=1, interval=1)])
    path = str(tmp_path / "ckpt.weights.h5")
    model.save_weights(path)
    other = _model()
    other.fit(x[:4], y[:4], batch_size=4, epochs=1, verbose=0)  # build optimizer variables
    other.load_weights(path)
    assert int(other.ensemble_updates.numpy()) == 4
    for a, b in zip(model.ensemble.weights, other.ensemble.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
