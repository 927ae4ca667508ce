"""Training losses against numpy references."""

import numpy as np
import tensorflow as tf

from frep_tf import losses


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_sre_matches_numpy():
    rng = np.random.default_rng(0)
    zc, za = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    y = rng.integers(0, 4, 5)
    pc, pa = _softmax(zc), _softmax(za)
    expected = np.sum((pc - np.eye(4)[y]) ** 2, -1) + 3.0 * np.sum((pa - pc) ** 2, -1)
    got = losses.sre(tf.constant(zc), tf.constant(za), tf.constant(y), 3.0).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_trades_is_ce_plus_beta_kl():
    rng = np.random.default_rng(1)
    zc, za = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    y = np.array([0, 3, 4])
    pc, pa = _softmax(zc), _softmax(za)
    ce = -np.log(pc[np.arange(3), y])
    kl = np.sum(pc * (np.log(pc) - np.log(pa)), -1)
    np.testing.assert_allclose(losses.trades(zc, za, y, 6.0).numpy(), ce + 6.0 * kl, rtol=1e-6)
    np.testing.assert_allclose(losses.kl_divergence(zc, zc).numpy(), 0.0, atol=1e-7)


def test_mart_is_finite_and_grows_with_disagreement():
    y = np.array([1, 1])
    clean = np.array([[0.0, 5.0, 0.0], [0.0, 5.0, 0.0]])
    agree, disagree = clean.copy(), np.array([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    low, high = losses.mart(clean, agree, y, 6.0).numpy(), losses.mart(clean, disagree, y, 6.0).numpy()
    assert np.all(np.isfinite(low)) and np.all(high > low)
