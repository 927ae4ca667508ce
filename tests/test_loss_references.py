"""TRADES and MART against numpy references written from the papers, and the train step that optimises them.

TRADES (Zhang et al. 2019, and their reference code): CE(p(x), y) + beta * KL(p(x) || p(x_adv)).
MART (Wang et al. 2020, and their reference code): BCE(p(x_adv), y) + beta * KL(p(x) || p(x_adv)) * (1 - p_y(x)),
where BCE = CE(p(x_adv), y) - log(1 - max_{k != y} p_k(x_adv)).
The inputs are chosen so that the mistakes these formulas invite change the value: KL(p || q) differs
from KL(q || p), CE of the clean logits from CE of the adversarial ones, p_y(x) is far from 1/2, and the
log term is far from zero. SRE (paper Eq. 16) is pinned the same way by test_losses.py and, through a
whole train step, by test_algorithm.py.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from frep_tf import losses
from frep_tf.layers import ReparamDense
from frep_tf.training.robust_model import RobustModel

# Clean and adversarial logits of 4 examples over 3 classes, labels y. p_y(x) runs from ~0.13 to ~0.9,
# away from 1/2; the adversarial logits move mass to a wrong class.
Z_CLEAN = np.array([[2.0, 0.1, -1.0], [0.3, -0.5, 1.5], [-1.0, 2.5, 0.0], [-1.0, 0.8, -2.0]])
Z_ADV = np.array([[0.5, 1.2, -0.8], [1.5, 0.6, -0.2], [0.8, 0.6, 0.9], [-2.0, 0.5, 1.5]])
Y = np.array([0, 2, 1, 0])


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _ce(z, y):
    return -np.log(_softmax(z)[np.arange(len(y)), y])


def _kl(p, q):
    """KL(p || q) = sum_k p_k log(p_k / q_k), per example."""
    return np.sum(p * np.log(p / q), -1)


def _largest_wrong(p, y):
    return np.where(np.eye(p.shape[-1], dtype=bool)[y], -np.inf, p).max(-1)


def _trades_reference(z_clean, z_adv, y, beta):
    return _ce(z_clean, y) + beta * _kl(_softmax(z_clean), _softmax(z_adv))


def _mart_reference(z_clean, z_adv, y, beta):
    p_clean, p_adv = _softmax(z_clean), _softmax(z_adv)
    bce = _ce(z_adv, y) - np.log(1.0 - _largest_wrong(p_adv, y))
    return bce + beta * _kl(p_clean, p_adv) * (1.0 - p_clean[np.arange(len(y)), y])


def _mart_tolerance(z_adv, y):
    """MART's code (and ours) takes log(1.0001 - w) for numerical safety where the paper has log(1 - w):
    the two differ by log(1 + 1e-4 / (1 - w)) <= 1e-4 / (1 - w)."""
    return 1e-4 / (1.0 - _largest_wrong(_softmax(z_adv), y)).min() + 1e-9


def _check_the_inputs_tell_the_likely_mistakes_apart():
    """Each mistake moves every example's loss by at least ~0.03 (times beta >= 1.5 where beta multiplies
    it), 30x the largest tolerance used below."""
    p_clean, p_adv = _softmax(Z_CLEAN), _softmax(Z_ADV)
    p_y = p_clean[np.arange(4), Y]
    kl = _kl(p_clean, p_adv)
    assert np.all(np.abs(kl - _kl(p_adv, p_clean)) > 0.03)  # KL the other way round
    assert np.all(kl > 0.1)  # beta dropped or changed: KL * (beta - 1) > 0.05
    assert np.all(np.abs(_ce(Z_CLEAN, Y) - _ce(Z_ADV, Y)) > 0.3)  # CE of the wrong logits
    assert np.all(np.abs(1.0 - 2.0 * p_y) * kl > 0.03)  # MART: p_y in place of 1 - p_y
    assert np.all(-np.log(1.0 - _largest_wrong(p_adv, Y)) > 0.3)  # MART: the log term with either sign
    assert _mart_tolerance(Z_ADV, Y) < 1e-3


@pytest.mark.parametrize("beta", [1.5, 6.0])
def test_trades_matches_zhang_et_al(beta):
    _check_the_inputs_tell_the_likely_mistakes_apart()
    got = losses.trades(tf.constant(Z_CLEAN), tf.constant(Z_ADV), tf.constant(Y), beta).numpy()
    assert got.shape == (4,)  # per example: the train step takes the batch mean
    np.testing.assert_allclose(got, _trades_reference(Z_CLEAN, Z_ADV, Y, beta), rtol=1e-10)


@pytest.mark.parametrize("beta", [1.5, 6.0])
def test_mart_matches_wang_et_al(beta):
    _check_the_inputs_tell_the_likely_mistakes_apart()
    got = losses.mart(tf.constant(Z_CLEAN), tf.constant(Z_ADV), tf.constant(Y), beta).numpy()
    assert got.shape == (4,)
    np.testing.assert_allclose(got, _mart_reference(Z_CLEAN, Z_ADV, Y, beta), rtol=0, atol=_mart_tolerance(Z_ADV, Y))


def test_mart_terms_one_by_one():
    """beta = 0 leaves the boosted cross-entropy; the change per unit of beta is the weighted KL."""
    _check_the_inputs_tell_the_likely_mistakes_apart()
    p_clean, p_adv = _softmax(Z_CLEAN), _softmax(Z_ADV)
    atol = _mart_tolerance(Z_ADV, Y)
    bce = losses.mart(Z_CLEAN, Z_ADV, Y, 0.0).numpy()
    np.testing.assert_allclose(bce, _ce(Z_ADV, Y) - np.log(1.0 - _largest_wrong(p_adv, Y)), rtol=0, atol=atol)
    per_beta = (losses.mart(Z_CLEAN, Z_ADV, Y, 2.0).numpy() - bce) / 2.0
    weighted_kl = _kl(p_clean, p_adv) * (1.0 - p_clean[np.arange(4), Y])
    np.testing.assert_allclose(per_beta, weighted_kl, rtol=1e-9)


# -- the train step: the batch mean of the loss, with the clean and adversarial logits in their places ----
EPS, LR, BETA = 0.1, 0.5, 3.0
N, D, H, C = 6, 5, 4, 3


def _model(objective):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((D,))
    h = ReparamDense(H, parameterization="hadamard", name="d1")(inputs)
    h = keras.layers.Activation("tanh", name="tanh")(h)
    net = keras.Model(inputs, ReparamDense(C, parameterization="hadamard", name="d2")(h))
    rng = np.random.default_rng(4)
    for layer in (net.get_layer("d1"), net.get_layer("d2")):
        for v in (layer.factor_a, layer.factor_b):
            v.assign(rng.normal(size=v.shape).astype("float32"))
        layer.bias.assign(0.1 * rng.normal(size=layer.bias.shape).astype("float32"))
    # Plain SGD without weight decay: every variable moves by -LR * d(loss)/d(variable).
    model = RobustModel(
        net, objective=objective, epsilon=EPS, pgd_steps=2, pgd_step_size=0.04, trades_beta=BETA, ensemble=False, seed=1
    )
    model.compile(optimizer=keras.optimizers.SGD(LR))
    return model


def _variables(net):
    d1, d2 = net.get_layer("d1"), net.get_layer("d2")
    values = {"a1": d1.factor_a, "b1": d1.factor_b, "bias1": d1.bias, "a2": d2.factor_a, "b2": d2.factor_b}
    values["bias2"] = d2.bias
    return {k: np.asarray(v).astype("float64") for k, v in values.items()}


def _probs(p, x_in):
    h = tf.tanh(x_in @ (p["a1"] * p["b1"]) + p["bias1"])
    z = h @ (p["a2"] * p["b2"]) + p["bias2"]
    return tf.exp(z) / tf.reduce_sum(tf.exp(z), -1, keepdims=True)


def _reference_loss(objective, p, x, x_adv, y):
    """The batch mean of the paper's loss on the network written out (float64 tf ops, not frep_tf.losses)."""
    probs = lambda x_in: _probs(p, x_in)  # noqa: E731
    onehot = tf.constant(np.eye(C)[y])
    p_clean, p_adv = probs(x), probs(x_adv)
    kl = tf.reduce_sum(p_clean * tf.math.log(p_clean / p_adv), -1)
    if objective == "trades":
        per_example = -tf.math.log(tf.reduce_sum(p_clean * onehot, -1)) + BETA * kl
    else:
        largest_wrong = tf.reduce_max(tf.where(onehot > 0, tf.zeros_like(p_adv), p_adv), -1)
        bce = -tf.math.log(tf.reduce_sum(p_adv * onehot, -1)) - tf.math.log(1.0 - largest_wrong)
        per_example = bce + BETA * kl * (1.0 - tf.reduce_sum(p_clean * onehot, -1))
    return tf.reduce_mean(per_example)


@pytest.mark.parametrize("objective", ["trades", "mart"])
def test_one_train_step_descends_the_batch_mean_of_the_papers_loss(objective):
    model = _model(objective)
    rng = np.random.default_rng(0)
    x = rng.random((N, D)).astype("float32")
    y = np.array([0, 1, 2, 0, 1, 2], "int32")
    seen = {}
    perturb = model._perturb

    def spy(*args):
        seen["x_adv"] = perturb(*args)
        return seen["x_adv"]

    model._perturb = spy
    before = _variables(model.network)
    logs = model.train_step((tf.constant(x), tf.constant(y)))  # eagerly: the spy sees concrete tensors
    x_adv = seen["x_adv"].numpy().astype("float64")
    assert np.abs(x_adv - x).max() > 0.5 * EPS  # the attack moved: clean and adversarial logits differ

    variables = {k: tf.Variable(v) for k, v in before.items()}
    with tf.GradientTape() as tape:
        loss = _reference_loss(objective, variables, x.astype("float64"), x_adv, y)
    grads = tape.gradient(loss, variables)
    # MART's 1e-4 inside the log (see _mart_tolerance) moves the loss by up to 1e-4 / (1 - w), and the
    # gradient of that term by the same factor relative.
    p_adv = _probs(before, x_adv).numpy()
    stabiliser = 1e-4 / (1.0 - _largest_wrong(p_adv, y)).min() if objective == "mart" else 0.0
    assert stabiliser < 1e-3
    # The step's logged loss is the batch mean before the update; float32 against float64.
    np.testing.assert_allclose(float(logs["loss"]), float(loss), rtol=1e-5, atol=stabiliser)
    after = _variables(model.network)
    # Weights are stored in float32: a move is exact to about one ulp of the largest weight.
    atol = 2 * float(np.spacing(np.float32(max(np.abs(v).max() for v in before.values()))))
    rtol = 2e-4 + stabiliser
    for name, grad in grads.items():
        assert np.abs(grad.numpy()).max() > 1e-3, name
        moved = after[name] - before[name]
        np.testing.assert_allclose(moved, -LR * grad.numpy(), rtol=rtol, atol=atol, err_msg=name)
