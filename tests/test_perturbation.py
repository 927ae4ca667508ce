"""--perturbation: N-FGSM (de Jorge et al., NeurIPS 2022) for the single-step objectives, against references
written in numpy apart from the engine, and the default (fgsm_rs) unchanged.

N-FGSM: x0 = clip(x + U(-k eps, k eps), 0, 1), one signed gradient step of `step_size` from x0, clipped to
[0, 1] and NOT projected back to the eps-ball (the official code clips to the image range only, and to a
ball only when asked). A projection, noise of eps instead of k eps, or a missing [0, 1] clip fails here.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from frep_tf.config import PERTURBATIONS, Config, ConfigError
from frep_tf.layers import ReparamDense
from frep_tf.training.robust_model import RobustModel
from frep_tf.validation import validate

EPS, K, SEED, CLASSES = 0.05, 2.0, 5, 4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(objective="fgsm", **kwargs):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,))
    net = keras.Model(inputs, ReparamDense(CLASSES, parameterization="plain", name="d")(inputs))
    return RobustModel(net, objective=objective, epsilon=EPS, ensemble=False, seed=SEED, **kwargs)


def _batch(n=16):
    rng = np.random.default_rng(1)
    # Pixels all over [0, 1], some right at the edges: the clip to the image range is exercised.
    x = rng.random((n, 12)).astype("float32")
    x[:, :2] = [0.0, 1.0]
    return x, rng.integers(0, CLASSES, n).astype("int32")


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _input_gradient(w, b, x0, y, objective, p_clean=None):
    """d objective / d x0 of the linear model z = x0 W + b, by hand: cross-entropy (fgsm) or SRE's
    consistency term ||softmax(z) - p_clean||^2 (sre)."""
    p = _softmax(x0 @ w + b)
    if objective == "fgsm":
        g_z = p - np.eye(CLASSES)[y]
    else:
        d = p - p_clean
        g_z = 2 * (p * d - p * np.sum(p * d, -1, keepdims=True))
    return g_z @ w.T


def _noise(radius, shape):
    """The model's own draw: a generator in the same state draws the same numbers."""
    return keras.random.uniform(shape, -radius, radius, seed=keras.random.SeedGenerator(SEED)).numpy()


def _reference(model, x, y, objective, radius, project):
    w, b = (np.asarray(v, np.float64) for v in (model.network.get_layer("d").kernel, model.network.get_layer("d").bias))
    noise = _noise(radius, x.shape)
    x0 = np.clip(x + noise, 0.0, 1.0)
    p_clean = _softmax(x @ w + b)
    step = model.step_size * np.sign(_input_gradient(w, b, x0, y, objective, p_clean))
    x_adv = x0 + step
    if project:
        x_adv = np.clip(x_adv, x - EPS, x + EPS)
    return noise, np.clip(x_adv, 0.0, 1.0)


def _perturb(model, x, y):
    logits = model.network(x, training=True)
    return model._perturb(tf.constant(x), tf.constant(y), logits).numpy()


@pytest.mark.parametrize("objective", ["fgsm", "sre"])
def test_one_nfgsm_perturbation_matches_a_numpy_reference(objective):
    model = _model(objective, perturbation="nfgsm")
    assert model.nfgsm_noise == K  # the paper's k = 2
    x, y = _batch()
    noise, expected = _reference(model, x, y, objective, K * EPS, project=False)
    # The noise spans the k * eps box, well past the eps-ball.
    assert np.abs(noise).max() <= K * EPS and np.abs(noise).max() > 0.9 * K * EPS
    got = _perturb(model, x, y)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # Not projected: perturbations beyond eps remain (up to (k + 1) eps); the image range holds.
    distance = np.abs(got - x)
    assert distance.max() > 2 * EPS and distance.max() <= (K + 1) * EPS + 1e-6
    assert np.mean(distance > EPS + 1e-6) > 0.2
    assert got.min() == 0.0 and got.max() == 1.0  # clipped to the image range, not beyond


def test_nfgsm_noise_and_step_size_are_the_flags():
    model = _model("fgsm", perturbation="nfgsm", nfgsm_noise=1.0, step_size=0.03)
    x, y = _batch()
    _, expected = _reference(model, x, y, "fgsm", 1.0 * EPS, project=False)
    np.testing.assert_allclose(_perturb(model, x, y), expected, atol=1e-6)


@pytest.mark.parametrize("objective", ["fgsm", "sre"])
def test_the_default_is_fgsm_with_a_random_start_as_before(objective):
    default = _model(objective)
    assert default.perturbation == "fgsm_rs" and Config().train.perturbation == "fgsm_rs"
    x, y = _batch()
    _, expected = _reference(default, x, y, objective, EPS, project=True)
    got = _perturb(default, x, y)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.abs(got - x).max() <= EPS + 1e-6
    # Named explicitly, the default is the same computation, bit for bit, through a whole train step.
    explicit = _model(objective, perturbation="fgsm_rs")
    np.testing.assert_array_equal(_perturb(explicit, x, y), got)
    default_a, explicit_a = _model(objective), _model(objective, perturbation="fgsm_rs")
    for m in (default_a, explicit_a):
        m.compile(optimizer=keras.optimizers.SGD(0.1))
        m.train_step((tf.constant(x), tf.constant(y)))
    for a, b in zip(default_a.network.weights, explicit_a.network.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_setting_survives_get_config():
    model = _model("fgsm", perturbation="nfgsm", nfgsm_noise=1.5)
    config = model.get_config()
    assert (config["perturbation"], config["nfgsm_noise"]) == ("nfgsm", 1.5)
    assert RobustModel.from_config(config).perturbation == "nfgsm"
    with pytest.raises(ValueError, match="Unknown perturbation"):
        _model("fgsm", perturbation="pgd")


def _cfg(**flat):
    return validate(Config.from_flat({"workdir": "", "mode": "evaluate", "model": __file__, **flat}))


def test_the_flag_is_validated_in_one_line_naming_it():
    assert _cfg(perturbation="nfgsm").train.perturbation == "nfgsm"
    assert _cfg(perturbation="nfgsm", objective="fgsm", nfgsm_noise=1.0).train.nfgsm_noise == 1.0
    assert PERTURBATIONS == ("fgsm_rs", "nfgsm")
    bad = [
        (dict(perturbation="rfgsm"), "--perturbation=rfgsm: allowed values are fgsm_rs, nfgsm"),
        (dict(perturbation="nfgsm", objective="pgd"), "--perturbation=nfgsm: only for the single-step objectives"),
        (dict(perturbation="nfgsm", objective="trades"), "--objective=trades perturbs with its own multi-step"),
        (dict(perturbation="nfgsm", nfgsm_noise=-1.0), "--nfgsm_noise=-1.0: must be >= 0"),
        (dict(nfgsm_noise=3.0), "--nfgsm_noise=3.0: only with --perturbation=nfgsm"),
    ]
    for flat, message in bad:
        with pytest.raises(ConfigError) as err:
            _cfg(**flat)
        assert message in str(err.value) and "\n" not in str(err.value), (flat, str(err.value))


@pytest.mark.parametrize("objective", ["fgsm", "sre"])
def test_nfgsm_trains_inside_fit(objective):
    """The traced train step (tf.function, as fit runs it) takes the N-FGSM branch and learns."""
    model = _model(objective, perturbation="nfgsm")
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = _batch(64)
    seen = []
    perturb = model._perturb
    model._perturb = lambda *args: seen.append(1) or perturb(*args)
    before = np.asarray(model.network.get_layer("d").kernel).copy()
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert seen and np.isfinite(history.history["loss"][0])
    assert not np.allclose(before, np.asarray(model.network.get_layer("d").kernel))
