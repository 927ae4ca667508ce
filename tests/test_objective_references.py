"""The training attacks of every adversarial objective against references written apart from the engine.

For `fgsm`, `pgd`, `trades` and `mart` the perturbation `RobustModel.train_step` trains on is recomputed
by hand: a tiny tanh network with fixed weights, its input gradient written out in numpy (float64),
the signed steps, the projection onto the eps-ball and [0, 1], and the model's own random start. A
second test per objective checks that every step of the attack raises the objective it is meant to
maximise (cross-entropy, or TRADES' KL(p(x) || p(x_adv))), so a flipped sign fails even where the
references were to drift. The SRE attack has its own reference in test_algorithm.py.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from frep_tf.layers import ReparamDense
from frep_tf.training.robust_model import RobustModel

EPS = 0.1
FGSM_STEP = 0.125  # 1.25 eps (Wong et al. 2020): larger than eps, so the projection onto the ball matters
PGD_STEPS, PGD_STEP = 3, 0.04  # 3 x 0.04 > eps: iterates reach the ball's surface and are projected
SEED = 6
N, D, H, C = 4, 6, 5, 3  # batch, inputs, hidden units, classes


def _weights():
    rng = np.random.default_rng(28)
    return {
        "a1": rng.normal(size=(D, H)),
        "b1": rng.normal(size=(D, H)),
        "bias1": 0.1 * rng.normal(size=H),
        "a2": rng.normal(size=(H, C)),
        "b2": rng.normal(size=(H, C)),
        "bias2": 0.1 * rng.normal(size=C),
    }


def _model(objective):
    """x -> ReparamDense(H, A1 * B1) -> tanh -> ReparamDense(C, A2 * B2): no BatchNorm, no dropout, so
    the examples of a batch are independent and the attack's BatchNorm mode plays no part."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((D,))
    h = ReparamDense(H, parameterization="hadamard", name="d1")(inputs)
    h = keras.layers.Activation("tanh", name="tanh")(h)
    net = keras.Model(inputs, ReparamDense(C, parameterization="hadamard", name="d2")(h))
    w = _weights()
    for name, i in (("d1", "1"), ("d2", "2")):
        layer = net.get_layer(name)
        layer.factor_a.assign(w["a" + i].astype("float32"))
        layer.factor_b.assign(w["b" + i].astype("float32"))
        layer.bias.assign(w["bias" + i].astype("float32"))
    model = RobustModel(
        net,
        objective=objective,
        epsilon=EPS,
        step_size=FGSM_STEP,
        pgd_steps=PGD_STEPS,
        pgd_step_size=PGD_STEP,
        trades_beta=6.0,
        ensemble=False,
        seed=SEED,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model, {k: v.astype("float32").astype("float64") for k, v in w.items()}


def _batch():
    rng = np.random.default_rng(2)
    x = rng.random((N, D)).astype("float32")
    # Entries next to 0 and 1: the clip to the image range must act as well as the eps-ball.
    x[0, 0], x[1, 1], x[2, 2], x[3, 3] = 0.02, 0.97, 0.0, 1.0
    return x, np.array([0, 2, 1, 2], "int32")


# -- the network, its losses and their input gradients, by hand (float64) --------------------------------
def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _forward(w, x):
    h = np.tanh(x @ (w["a1"] * w["b1"]) + w["bias1"])
    return h, h @ (w["a2"] * w["b2"]) + w["bias2"]


def _ce(w, x, y):
    return -np.log(_softmax(_forward(w, x)[1])[np.arange(len(y)), y])


def _kl(w, x, p_ref):
    """KL(p_ref || p(x)) per example: the TRADES attack's objective, p_ref = p(clean x)."""
    q = _softmax(_forward(w, x)[1])
    return np.sum(p_ref * (np.log(p_ref) - np.log(q)), -1)


def _input_grad(w, x, dlogits_fn):
    """d(sum of the per-example objective)/dx, by the chain rule through dense -> tanh -> dense."""
    h, z = _forward(w, x)
    dz = dlogits_fn(_softmax(z))
    dh = dz @ (w["a2"] * w["b2"]).T
    return (dh * (1.0 - h**2)) @ (w["a1"] * w["b1"]).T


def _ce_grad(w, x, y):
    # d CE / d logits = softmax - onehot(y)
    return _input_grad(w, x, lambda p: p - np.eye(C)[y])


def _kl_grad(w, x, p_ref):
    # d KL(p_ref || softmax(z)) / d z = softmax(z) - p_ref
    return _input_grad(w, x, lambda q: q - p_ref)


def _signed_step(x, x_t, grad, step):
    """x_t + step * sign(grad), projected onto {|x' - x| <= eps} and then onto [0, 1]."""
    # The signs must be those float32 computes: every component well away from zero relative to the
    # largest. float32 gets these gradients to ~3e-5 relative at worst (TRADES' first step, where
    # p(x_t) - p(x) ~ 1e-3 is a difference of probabilities ~0.3 rounded to ~1e-8): 1e-3 is 30x that.
    assert np.abs(grad).min() > 1e-3 * np.abs(grad).max()
    return np.clip(np.clip(x_t + step * np.sign(grad), x - EPS, x + EPS), 0.0, 1.0)


def _start(objective, x):
    """The model's own random start: a SeedGenerator in the model's initial state draws the same numbers."""
    gen = keras.random.SeedGenerator(SEED)
    if objective == "trades":  # TRADES (Zhang et al. 2019) starts at x + 0.001 * N(0, I)
        noise = np.asarray(keras.random.normal(x.shape, seed=gen), "float64")
        assert 0 < np.abs(noise).max() < 10
        return np.clip(x + 0.001 * noise, 0.0, 1.0)
    # fgsm (Wong et al. 2020), pgd (Madry et al. 2018), mart (Wang et al. 2020): x + U(-eps, eps)
    noise = np.asarray(keras.random.uniform(x.shape, -EPS, EPS, seed=gen), "float64")
    assert np.abs(noise).max() <= EPS and np.abs(noise).max() > 0.8 * EPS
    return np.clip(x + noise, 0.0, 1.0)


def _reference_attack(objective, w, x, y):
    """The iterates of the attack: [start, x_1, ..., x_adv]."""
    x = x.astype("float64")
    iterates = [_start(objective, x)]
    if objective == "fgsm":
        iterates.append(_signed_step(x, iterates[0], _ce_grad(w, iterates[0], y), FGSM_STEP))
        return iterates
    p_clean = _softmax(_forward(w, x)[1])
    for _ in range(PGD_STEPS):
        x_t = iterates[-1]
        grad = _kl_grad(w, x_t, p_clean) if objective == "trades" else _ce_grad(w, x_t, y)
        iterates.append(_signed_step(x, x_t, grad, PGD_STEP))
    return iterates


def _attacked_objective(objective, w, x, y):
    """What the attack maximises, per example, as a function of the attacked input."""
    if objective == "trades":
        p_clean = _softmax(_forward(w, x.astype("float64"))[1])
        return lambda x_t: _kl(w, x_t, p_clean)
    return lambda x_t: _ce(w, x_t, y)


def _model_attack(objective):
    """One train step of the model on the batch, recording the perturbation and the attack's iterates."""
    model, w = _model(objective)
    x, y = _batch()
    seen = {"iterates": []}
    perturb, sign_step = model._perturb, model._sign_step

    def perturb_spy(*args):
        seen["x_adv"] = perturb(*args)
        return seen["x_adv"]

    def sign_step_spy(x_nat, x_start, objective_fn, step):
        out = sign_step(x_nat, x_start, objective_fn, step)
        if not seen["iterates"]:
            seen["iterates"].append(x_start.numpy().astype("float64"))
        seen["iterates"].append(out.numpy().astype("float64"))
        return out

    model._perturb, model._sign_step = perturb_spy, sign_step_spy
    model.train_step((tf.constant(x), tf.constant(y)))  # eagerly: the spies see concrete tensors
    return w, x, y, seen


@pytest.mark.parametrize("objective", ["fgsm", "pgd", "trades", "mart"])
def test_training_perturbation_matches_a_hand_computed_reference(objective):
    w, x, y, seen = _model_attack(objective)
    expected = _reference_attack(objective, w, x, y)
    x_adv = expected[-1]
    # The reference exercises what it should: both projections act, and the attack moves every input
    # entry but those held at the edge of [0, 1].
    assert np.isclose(np.abs(x_adv - x), EPS, atol=1e-6).any()
    assert (x_adv == 0.0).any() and (x_adv == 1.0).any()
    assert np.all((np.abs(x_adv - expected[0]) > 1e-6) | (x_adv == 0.0) | (x_adv == 1.0))
    # float32 against float64: the same signs give the same points to within float32 rounding of [0, 1].
    assert len(seen["iterates"]) == len(expected)
    np.testing.assert_allclose(seen["iterates"][0], expected[0], atol=1e-6, err_msg="random start")
    np.testing.assert_allclose(seen["x_adv"].numpy(), x_adv, atol=1e-6, err_msg="x_adv")


@pytest.mark.parametrize("objective", ["fgsm", "pgd", "trades", "mart"])
def test_every_attack_step_raises_the_attacked_objective(objective):
    """Evaluated by the reference network on the model's own iterates: start < x_1 < ... < x_adv for
    every example. A signed step of size s changes the objective by s * ||grad||_1 to first order, and
    the projections only shorten a step along the same signs, so a step up never lowers it at these
    step sizes; a step the wrong way does."""
    w, x, y, seen = _model_attack(objective)
    objective_at = _attacked_objective(objective, w, x, y)
    values = np.stack([objective_at(x_t) for x_t in seen["iterates"]])  # (steps + 1, batch)
    assert len(values) == (2 if objective == "fgsm" else PGD_STEPS + 1)
    rises = np.diff(values, axis=0)
    assert np.all(rises > 0), f"{objective}: objective per step and example {values.round(5).tolist()}"
    np.testing.assert_allclose(seen["x_adv"].numpy(), seen["iterates"][-1])
