"""Pins FReP's algorithm (paper Alg. 1, Eq. 12-16) against references written apart from the engine.

A flipped attack sign, cross-entropy in place of the SRE consistency term (in the attack or in the
loss), BatchNorm in the wrong mode, or a learning-rate / ensemble-interval schedule off by a decay
must fail here; the engine's own layers, losses and attacks are not used to build the references.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from frep_tf.config import Config, ModelConfig, TrainConfig
from frep_tf.layers import ReparamConv2D, ReparamDense
from frep_tf.training.ensemble import TemporalEnsemble, tau_at
from frep_tf.training.robust_model import RobustModel

EPS, LAM, LR = 0.1, 4.0, 0.5


def _tiny_frep_model(attack_bn: str):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 5, 1))
    h = ReparamConv2D(3, 3, 1, parameterization="hadamard", name="c")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Flatten(name="flat")(h)
    net = keras.Model(inputs, ReparamDense(4, parameterization="hadamard", name="d")(h))
    bn = net.get_layer("bn")
    # Running statistics unlike any batch's, so that the mode BatchNorm runs in shows in the result.
    bn.moving_mean.assign([0.3, -0.2, 0.1])
    bn.moving_variance.assign([2.0, 0.5, 1.5])
    bn.gamma.assign([1.2, 0.8, 1.0])
    bn.beta.assign([0.1, 0.0, -0.1])
    # Weight decay and momentum off: the update is -lr * gradient.
    model = RobustModel(net, objective="sre", epsilon=EPS, sre_lambda=LAM, attack_bn=attack_bn, ensemble=False, seed=3)
    model.compile(optimizer=keras.optimizers.SGD(LR))
    return model


def _reference_forward(p, x, batch_stats: bool):
    """The network written out: conv(A*B) + bias -> BatchNorm -> ReLU -> flatten -> dense(A*B) + bias."""
    h = tf.nn.conv2d(x, p["c_a"] * p["c_b"], strides=1, padding="SAME") + p["c_bias"]
    if batch_stats:
        mean, var = tf.nn.moments(h, axes=[0, 1, 2])
    else:
        mean, var = p["moving_mean"], p["moving_variance"]
    h = (h - mean) / tf.sqrt(var + p["bn_eps"]) * p["gamma"] + p["beta"]
    h = tf.reshape(tf.nn.relu(h), (x.shape[0], -1))
    return h @ (p["d_a"] * p["d_b"]) + p["d_bias"]


def _reference_step(p, x, y, noise, attack_bn: str):
    """Alg. 1 by hand: the adversarial example and the gradient of Eq. 16 w.r.t. every factor; the
    attack's BatchNorm uses the attacked batch's statistics (`train`) or the running ones (`eval`)."""
    probs = lambda logits: tf.exp(logits) / tf.reduce_sum(tf.exp(logits), -1, keepdims=True)  # noqa: E731
    onehot = tf.constant(np.eye(4, dtype=np.float32)[y])
    p_clean = probs(_reference_forward(p, x, batch_stats=True))
    # The clean forward pass of the step updates BatchNorm's running statistics before the attack reads them.
    h = tf.nn.conv2d(x, p["c_a"] * p["c_b"], strides=1, padding="SAME") + p["c_bias"]
    batch_mean, batch_var = tf.nn.moments(h, axes=[0, 1, 2])
    m = p["bn_momentum"]
    attack_p = dict(
        p,
        moving_mean=m * p["moving_mean"] + (1 - m) * batch_mean,
        moving_variance=m * p["moving_variance"] + (1 - m) * batch_var,
    )
    # Eq. 12: x0 = clip(x + U(-eps, eps)); one signed step of size eps on the consistency term.
    x0 = tf.clip_by_value(x + noise, 0.0, 1.0)
    with tf.GradientTape() as tape:
        tape.watch(x0)
        p_adv0 = probs(_reference_forward(attack_p, x0, batch_stats=attack_bn == "train"))
        consistency = tf.reduce_sum(tf.square(p_adv0 - tf.stop_gradient(p_clean)))
    step = EPS * tf.sign(tape.gradient(consistency, x0))
    x_adv = tf.clip_by_value(tf.clip_by_value(x0 + step, x - EPS, x + EPS), 0.0, 1.0)
    trainable = ["c_a", "c_b", "c_bias", "gamma", "beta", "d_a", "d_b", "d_bias"]
    variables = {k: tf.Variable(p[k]) for k in trainable}
    with tf.GradientTape() as tape:
        q = dict(p, **variables)
        pc = probs(_reference_forward(q, x, batch_stats=True))
        pa = probs(_reference_forward(q, x_adv, batch_stats=True))
        # Eq. 16: ||p(x) - y||^2 + lambda * ||p(x_adv) - p(x)||^2, mean over the batch.
        loss = tf.reduce_mean(tf.reduce_sum(tf.square(pc - onehot), -1) + LAM * tf.reduce_sum(tf.square(pa - pc), -1))
    grads = tape.gradient(loss, variables)
    return x0, x_adv, {k: g.numpy() for k, g in grads.items()}


def _params(net):
    c, bn, d = net.get_layer("c"), net.get_layer("bn"), net.get_layer("d")
    values = {
        "c_a": c.factor_a,
        "c_b": c.factor_b,
        "c_bias": c.bias,
        "gamma": bn.gamma,
        "beta": bn.beta,
        "moving_mean": bn.moving_mean,
        "moving_variance": bn.moving_variance,
        "d_a": d.factor_a,
        "d_b": d.factor_b,
        "d_bias": d.bias,
    }
    out = {k: tf.constant(np.asarray(v)) for k, v in values.items()}
    out.update(bn_eps=float(bn.epsilon), bn_momentum=float(bn.momentum))
    return out


@pytest.mark.parametrize("attack_bn", ["train", "eval"])
def test_one_frep_step_matches_a_hand_computed_reference(attack_bn):
    model = _tiny_frep_model(attack_bn)
    net = model.network
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((6, 5, 5, 1)).astype("float32"))
    y = rng.integers(0, 4, 6).astype("int32")
    before = _params(net)
    # U is the model's own draw: a generator in the same state draws the same numbers.
    noise = keras.random.uniform(x.shape, -EPS, EPS, seed=keras.random.SeedGenerator(3))
    assert np.abs(noise).max() <= EPS and np.abs(noise).max() > 0.9 * EPS
    x0, x_adv, grads = _reference_step(before, x, y, noise, attack_bn)
    assert 0.0 <= float(tf.reduce_min(x_adv)) and float(tf.reduce_max(x_adv)) <= 1.0
    assert float(tf.reduce_max(tf.abs(x_adv - x))) <= EPS + 1e-6
    # The signed step moves (nearly) every coordinate; the projection onto the eps-ball stops some short.
    assert np.mean(np.abs(x_adv - x0) > 1e-6) > 0.9

    seen = {}
    perturb = model._perturb

    def spy(*args):
        seen["x_adv"] = perturb(*args)
        return seen["x_adv"]

    model._perturb = spy
    model.train_step((x, tf.constant(y)))  # eagerly: the spy sees concrete tensors
    np.testing.assert_allclose(seen["x_adv"].numpy(), x_adv.numpy(), atol=1e-6)
    after = _params(net)
    for name, grad in grads.items():
        assert np.abs(grad).max() > 0, name
        moved = after[name].numpy() - before[name].numpy()
        np.testing.assert_allclose(moved, -LR * grad, rtol=2e-4, atol=1e-7, err_msg=name)


def test_learning_rate_ensemble_interval_and_tau_at_the_decays():
    """The paper's schedule: 100 epochs of 391 steps, lr 0.1 / 10 at epochs 70 and 85, interval 100 x 10."""
    from frep_tf.data.splits import DatasetInfo
    from tests.helpers import build_and_compile

    cfg = Config(train=TrainConfig(epochs=100), model=ModelConfig(arch="small_cnn", width=0.25))
    info = DatasetInfo("synthetic", (8, 8, 1), 10, num_train=50_000, num_val=0, num_test=0, augmentation="none")
    keras.utils.set_random_seed(0)
    model, decay_steps = build_and_compile(cfg, info, steps_per_epoch=391)
    assert decay_steps == (70 * 391, 85 * 391)
    ensemble = TemporalEnsemble(decay=0.99, warmup=10.0, interval=100, decay_steps=decay_steps)
    ensemble.set_model(model)
    expected = {
        70 * 391 - 1: (0.1, 100),
        70 * 391: (0.01, 1000),
        85 * 391 - 1: (0.01, 1000),
        85 * 391: (0.001, 10000),
        100 * 391 - 1: (0.001, 10000),
    }
    for step, (lr, interval) in expected.items():
        model.optimizer.iterations.assign(step)
        assert float(np.asarray(model.optimizer.learning_rate)) == pytest.approx(lr, rel=1e-6), step
        assert ensemble.current_interval() == interval, step
    # tau = min(tau0, i / (i + c)): the first update copies, then a warm-up, capped at tau0.
    assert [tau_at(i, 0.99, 10.0) for i in (0, 1, 10, 90, 990, 5000)] == pytest.approx(
        [0.0, 1 / 11, 0.5, 0.9, 0.99, 0.99]
    )


def test_frep_ch_structured_end_to_end_through_main(frep_ch_structured_run):
    """FReP-CH (channel mixing) with --structured through the real entry point: whole channels removed.
    The run (conftest.py, shared with test_deploy.py): the quickstart at width 1 with --parameterization=channel
    --structured --sparsity=0.7, 3 epochs, pruned after 1; PGD-3 and clean on 60 test images."""
    import json

    results = json.loads((frep_ch_structured_run / "results.json").read_text())
    assert results["model"]["parameterization"] == "channel"
    ev = results["evaluation"]
    assert ev["clean"]["accuracy"] > 0.3 and ev["pgd"]["accuracy"] <= ev["clean"]["accuracy"]
    exported = keras.saving.load_model(frep_ch_structured_run / "export" / "model.keras")
    removed, total = 0, 0
    for name in ("conv1", "conv2", "conv3"):
        kernel = exported.get_layer(name).kernel.numpy()
        per_channel = np.abs(kernel.reshape(-1, kernel.shape[-1])).max(0)
        removed += int(np.sum(per_channel == 0))
        total += kernel.shape[-1]
        assert 0 < np.sum(per_channel > 0), name  # every layer keeps a channel
    # 70 % of the conv channels (32 + 64 + 128 at width 1), ranked globally; the classes are never removed.
    assert total == 224 and removed == round(0.7 * total)
    assert np.all(np.abs(exported.get_layer("head_dense").kernel.numpy()).max(0) > 0)


def test_short_quickstart_keeps_its_measured_robustness(quickstart_run):
    """Regression guard, not a tuned pass mark: the quickstart shortened to 12 epochs (pruning at 6)
    measured PGD-20 0.319 / 0.261 / 0.339 and clean 0.636 / 0.533 / 0.681 (seeds 0 / 1 / 2, 360 test
    images); the floors are the minimum over those seeds minus 10 points. The run is conftest.py's
    (shared with test_main.py, which checks its outputs); its exports and TFLite evaluation come after
    training and do not change it."""
    import json

    workdir, _ = quickstart_run
    ev = json.loads((workdir / "results.json").read_text())["evaluation"]
    assert ev["pgd"]["samples"] == 360 and ev["config"]["pgd_steps"] == 20
    assert ev["pgd"]["accuracy"] >= 0.261 - 0.10, ev["pgd"]
    assert ev["clean"]["accuracy"] >= 0.533 - 0.10, ev["clean"]


def test_ensemble_interval_candidates_in_the_late_phase():
    from frep_tf.training.ensemble import is_update_step

    paper = (70 * 391, 85 * 391)  # 100 epochs of 391 steps, interval 100 -> 1,000 -> 10,000

    def updates(lo, hi, count_from):
        return [s for s in range(lo, hi) if is_update_step(s, 100, paper, count_from=count_from)]

    # Global step (today's default): 6 updates between the decays, none in the last 15 epochs.
    assert updates(paper[0], paper[1], "global") == list(range(28_000, 34_000, 1_000))
    assert updates(paper[1], 100 * 391 + 1, "global") == []
    # Counted from each decay: the same count between them, and one at the second decay.
    assert updates(paper[0], paper[1], "decay") == list(range(paper[0], paper[1], 1_000))
    assert updates(paper[1], 100 * 391 + 1, "decay") == [paper[1]]
    assert updates(1, 200, "global") == updates(1, 200, "decay") == [100]


def test_final_update_lands_in_the_last_epoch_before_its_checkpoint():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 1))
    net = keras.Model(inputs, ReparamDense(3, name="d")(keras.layers.Flatten()(inputs)))
    x = np.random.default_rng(0).random((12, 4, 4, 1)).astype("float32")
    y = np.arange(12) % 3
    counts = []
    for final in (False, True):
        model = RobustModel(net, objective="sre", epsilon=0.1)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        ensemble = TemporalEnsemble(decay=0.9, warmup=1.0, interval=5, final_update=final)
        seen = []

        class Record(keras.callbacks.Callback):  # runs after the ensemble, like EpochCheckpoint
            def on_epoch_end(self, epoch, logs=None):
                seen.append(int(model.ensemble_updates.numpy()))  # noqa: B023

        model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[ensemble, Record()])  # 9 steps: update at 5
        counts.append(seen)
    assert counts == [[0, 1, 1], [0, 1, 2]]
