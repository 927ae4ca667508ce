"""HARP: learnt per-layer rates under a global budget, scores through a straight-through top-k, the
budget term with its step-wise gamma, exact final masks; end to end through main.py, and a kill inside
the prune stage that resumes to the uninterrupted run."""

import json
import re
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from frep_tf.config import ConfigError
from frep_tf.layers.reparam import reparam_layers
from frep_tf.methods import harp, harp_budget, stages
from frep_tf.models import build_model
from tests.test_methods_pipeline import TINY, _exported, _strip, cfg_of, check_run, run_main


def _model():
    keras.utils.set_random_seed(0)
    return build_model("small_cnn", input_shape=(8, 8, 1), parameterization="plain", width=0.25)


def _state(layers, sparsity, **kwargs):
    state = harp.HarpState.for_layers(layers, sparsity, **kwargs)
    state.initialize([layer.fused_kernel() for layer in layers])
    return state


def _np_rates(logits, floor):
    return (1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))) * (1.0 - floor) + floor


def _np_sigmoid_slope(logits, floor):
    p = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
    return p * (1.0 - p) * (1.0 - floor)


def _np_topk_mask(values, keep):
    mask = np.zeros(values.size, np.float32)
    mask[np.argsort(-values.ravel(), kind="stable")[:keep]] = 1.0
    return mask.reshape(values.shape)


# -- (a) rates under the budget: exact kept count after allocation -----------------------------------------
def test_learnt_rates_always_meet_the_global_budget_exactly_after_allocation():
    rng = np.random.default_rng(0)
    shapes = [(3, 3, 1, 4), (3, 3, 4, 8), (3, 3, 8, 16), (16, 10)]
    sizes = np.array([36, 288, 1152, 160])
    for sparsity in (0.5, 0.9, 0.99):
        state = harp.HarpState(shapes, sparsity, gamma=0.5, init_density=0.3)
        state.initialize([rng.normal(size=s).astype("float32") for s in shapes])
        keep_total = round((1 - sparsity) * sizes.sum())
        optimizer = keras.optimizers.SGD(1.0)
        optimizer.build([state.rate_logits])
        for step in range(30):  # rate learning: the budget term plus a noisy stand-in for the task's pull
            with tf.GradientTape() as tape:
                loss = state.penalty() + tf.reduce_sum(rng.normal(size=4).astype("float32") * state.rates())
            optimizer.apply([tape.gradient(loss, state.rate_logits)], [state.rate_logits])
            counts = state.final_counts()
            assert counts.sum() == keep_total, (sparsity, step, counts)
            assert np.all(counts >= 1) and np.all(counts <= sizes)
        rates = state.rates().numpy()
        assert np.all(rates > state.floor) and np.all(rates < 1)
        # While learning, each layer keeps n - floor((1 - r) n) (the original's GetSubnet), at least one.
        np.testing.assert_array_equal(
            harp_budget.keep_counts(state.rates(), state.sizes).numpy(), sizes - np.floor((1 - rates) * sizes)
        )
    # Extremes: every layer at the floor, every layer dense, one layer everything; tiny and whole budgets.
    for densities, keep_total in [
        ([1e-3] * 4, 1000),
        ([1.0] * 4, 17),
        ([1.0, 1e-3, 1e-3, 1e-3], 40),
        (rng.random(4), 4),
        (rng.random(4), int(sizes.sum())),
    ]:
        counts = harp_budget.allocate(densities, sizes, keep_total)
        assert counts.sum() == keep_total and np.all(counts >= 1) and np.all(counts <= sizes), counts


def test_allocation_follows_the_learnt_rates():
    # Learnt counts 10, 30, 60 (of 100 each) scaled to keep 50: 5, 15, 30, nothing to round.
    np.testing.assert_array_equal(harp_budget.allocate([0.1, 0.3, 0.6], [100, 100, 100], 50), [5, 15, 30])
    # A layer that would exceed its size is capped and the others take the rest in proportion.
    np.testing.assert_array_equal(harp_budget.allocate([0.9, 0.05, 0.05], [10, 100, 100], 30), [10, 10, 10])
    # Largest remainder: scale 40/30 gives 13.33 each; the first (stable order) gets the extra one.
    np.testing.assert_array_equal(harp_budget.allocate([0.1, 0.1, 0.1], [100, 100, 100], 40), [14, 13, 13])
    with pytest.raises(ValueError):
        harp_budget.allocate([0.1, 0.1, 0.1], [100, 100, 100], 2)  # fewer weights than layers


# -- (b) gradients through the straight-through top-k -------------------------------------------------------
def test_straight_through_mask_forward_count_and_gradients():
    values = tf.constant([[0.3, -2.0, 1.0], [0.1, 0.5, -0.2]])
    upstream = tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    rate = tf.constant(0.4)  # keeps 6 - floor(0.6 * 6) = 3
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([values, rate])
        mask = harp_budget.straight_through_mask(tf.abs(values), rate, 6)
        total = tf.reduce_sum(mask * upstream)
    np.testing.assert_array_equal(mask.numpy(), [[0, 1, 1], [0, 1, 0]])  # exact top-3 of |v|
    np.testing.assert_array_equal(tape.gradient(total, values).numpy(), upstream.numpy() * np.sign(values.numpy()))
    assert tape.gradient(total, rate).numpy() == 21.0  # the sum of the mask's gradient
    tied = harp_budget.rank_mask(tf.ones([2, 3]), tf.constant(4))
    np.testing.assert_array_equal(tied.numpy(), [[1, 1, 1], [1, 0, 0]])  # ties: lower index first, exact k


def test_score_and_rate_gradients_of_a_real_forward_pass_match_numpy():
    model = _model()
    layers = reparam_layers(model)
    head = layers[-1]
    state = _state(layers, 0.5, init_density=0.7)
    state.rate_logits.assign([0.3, -0.2, 0.5, 1.1])  # a different rate per layer
    state.assign_masks(layers)
    rates = _np_rates(state.rate_logits.numpy(), state.floor)
    for layer, s, r in zip(layers, state.scores, rates, strict=True):  # forward: top-k(|s|), k from the rate
        n = s.shape.num_elements()
        keep = n - int(np.floor(np.float32(1 - r) * n))
        np.testing.assert_array_equal(np.asarray(layer.mask), _np_topk_mask(np.abs(np.asarray(s)), keep))
    x = tf.random.stateless_uniform((4, 8, 8, 1), seed=(1, 2))
    features = keras.Model(model.inputs, head.input)(x, training=False).numpy()
    carriers = [layer.mask.value for layer in layers]
    with tf.GradientTape() as tape:
        tape.watch(carriers)
        loss = tf.reduce_sum(tf.square(model(x, training=False)))
    grads = state.straight_through_gradients(tape.gradient(loss, carriers))
    # The head: logits = f (W * m) + b, d loss / d m = W * f^T (2 logits).
    w, b, m = np.asarray(head.kernel), np.asarray(head.bias), np.asarray(head.mask)
    mask_grad = w * (features.T @ (2 * (features @ (w * m) + b)))
    np.testing.assert_allclose(grads[3].numpy(), mask_grad * np.sign(np.asarray(state.scores[3])), rtol=1e-4, atol=1e-6)
    slope = _np_sigmoid_slope(state.rate_logits.numpy(), state.floor)
    np.testing.assert_allclose(grads[-1].numpy()[3], mask_grad.sum() * slope[3], rtol=1e-4)
    assert all(np.any(g.numpy() != 0) for g in grads)


# -- (c) the budget term and gamma's step-wise schedule ---------------------------------------------------
def test_budget_term_and_its_gradient_match_numpy():
    shapes = [(3, 3, 1, 4), (3, 3, 4, 8), (16, 10)]
    sizes = np.array([36, 288, 160], np.float64)
    state = harp.HarpState(shapes, 0.9, gamma=0.3)
    state.initialize([np.ones(s, "float32") for s in shapes])
    assert state.floor == pytest.approx(0.01)
    np.testing.assert_allclose(state.rates().numpy(), [0.1] * 3, rtol=1e-6)  # starts at --harp_init_density
    assert float(state.budget().numpy()) == pytest.approx(0.0, abs=1e-5)  # 0.1 is the target: no term
    logits = np.array([0.4, -1.0, 2.0], np.float32)
    state.rate_logits.assign(logits)
    with tf.GradientTape() as tape:
        penalty = state.penalty()
    rates = _np_rates(logits, 0.01)
    over = (sizes @ rates) / sizes.sum() / 0.1 - 1.0
    assert over > 0
    assert float(penalty.numpy()) == pytest.approx(0.3 * over, rel=1e-5)
    expected = 0.3 * sizes / (sizes.sum() * 0.1) * _np_sigmoid_slope(logits, 0.01)
    np.testing.assert_allclose(tape.gradient(penalty, state.rate_logits).numpy(), expected, rtol=1e-5)
    state.rate_logits.assign([-5.0, -5.0, -5.0])  # under the budget: no term and no gradient
    with tf.GradientTape() as tape:
        penalty = state.penalty()
    assert float(penalty.numpy()) == 0.0
    np.testing.assert_array_equal(tape.gradient(penalty, state.rate_logits).numpy(), 0.0)


def _original_gammas(budgets_at_epoch_end, epochs, steps_per_epoch, gamma0):
    """The original's per-epoch rule: gamma = (epoch + 1) * gamma0 until the budget term, rounded to 4
    decimals, is 0 at the end of an epoch; from then on gamma keeps that epoch's value."""
    out, frozen = [], None
    for epoch in range(epochs):
        gamma = frozen if frozen is not None else (epoch + 1) * gamma0
        out += [gamma] * steps_per_epoch
        if frozen is None and round(budgets_at_epoch_end[epoch], 4) == 0.0:
            frozen = gamma
    return out


@pytest.mark.parametrize("met_after", [0, 2, None])  # the budget met after epoch 0, after epoch 2, never
def test_gamma_grows_step_wise_and_freezes_once_the_budget_is_met(met_after):
    epochs, per_epoch, gamma0 = 5, 3, 0.25
    total = epochs * per_epoch
    # The budget term as each step finds it (after the step before), met from epoch `met_after` on.
    budget = [0.0 if met_after is not None and s // per_epoch > met_after else 0.8 / (1 + s) for s in range(total)]
    budget[(met_after + 1) * per_epoch if met_after is not None else 0] = 3e-5  # "0.0000" at 4 decimals
    gamma, frozen, got = tf.constant(gamma0), tf.constant(False), []
    for s in range(total):
        gamma, frozen = harp_budget.next_gamma(s, total, epochs, gamma0, gamma, frozen, tf.constant(budget[s]))
        got.append(float(gamma.numpy()))
    ends = [budget[(e + 1) * per_epoch] if e + 1 < epochs else 0.0 for e in range(epochs)]
    np.testing.assert_allclose(got, _original_gammas(ends, epochs, per_epoch, gamma0), rtol=1e-6)
    assert bool(frozen.numpy()) == (met_after is not None and met_after + 1 < epochs)


def test_the_prune_step_routes_the_budget_gradient_and_the_straight_through_one_to_the_rates():
    """One optimizer step of the real prune stage (natural loss, no weight decay, SGD lr 0.1): the rate
    parameters move by -lr (straight-through + gamma * budget gradient), the scores by -lr (straight
    through), the kernels not at all; the step counter and gamma follow the schedule."""
    from frep_tf.data.splits import DatasetInfo
    from frep_tf.run.setup import build_robust_model

    keras.utils.set_random_seed(0)
    cfg = cfg_of(
        method="harp", arch="small_cnn", width=0.25, sparsity=0.8, objective="natural", weight_decay=0.0,
        parameterization="plain", ensemble=False, harp_gamma=2.0, harp_init_density=0.5, lr=0.1,
    )  # fmt: skip
    info = DatasetInfo("tiny", (8, 8, 1), 10, num_train=16, num_val=0, num_test=0, augmentation="none")
    model = build_robust_model(cfg, info)
    stage = next(s for s in stages.plan(cfg) if s.name == "prune")
    stages.configure(stage, model, cfg)
    stages.compile_stage(stage, model, steps_per_epoch=1, cfg=cfg)
    stages.begin(stage, model, cfg)
    state = model.method_state["harp_state"]
    state.total_steps.assign(stage.epochs)
    rng = np.random.default_rng(1)
    x, y = rng.random((16, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 16).astype("int32")
    layers = model.reparam
    kernels = [np.asarray(layer.kernel).copy() for layer in layers]
    scores = [np.asarray(s).copy() for s in state.scores]
    logits = state.rate_logits.numpy().copy()
    # The expected gradients, from the same masks and a separate forward pass (BatchNorm in training mode).
    state.assign_masks(layers)
    carriers = [layer.mask.value for layer in layers]
    with tf.GradientTape() as tape:
        tape.watch(carriers)
        out = model.network(x, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, out, from_logits=True))
    st = [g.numpy() for g in state.straight_through_gradients(tape.gradient(loss, carriers))]
    sizes = np.array(state.sizes, np.float64)
    rates = _np_rates(logits, state.floor)
    assert (sizes @ rates) / sizes.sum() > 0.2  # over the budget: the term pulls
    budget_grad = 2.0 * sizes / (sizes.sum() * 0.2) * _np_sigmoid_slope(logits, state.floor)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(state.rate_logits.numpy(), logits - 0.1 * (st[-1] + budget_grad), rtol=1e-4)
    for s, before, g in zip(state.scores, scores, st[:-1], strict=True):
        np.testing.assert_allclose(np.asarray(s), before - 0.1 * g, rtol=1e-4, atol=1e-7)
    for layer, w in zip(layers, kernels, strict=True):
        np.testing.assert_array_equal(np.asarray(layer.kernel), w)  # weights frozen
    assert int(state.steps.numpy()) == 1 and float(state.gamma.numpy()) == 2.0


# -- (d) the fine-tuning masks ----------------------------------------------------------------------------
def test_final_masks_have_exactly_the_global_sparsity_and_follow_rates_and_scores():
    model = _model()
    layers = reparam_layers(model)
    sizes = [int(np.prod(layer.mask.shape)) for layer in layers]
    rng = np.random.default_rng(3)
    for sparsity in (0.6, 0.9, 0.99):
        state = _state(layers, sparsity)
        state.assign_masks(layers)  # as during the prune stage: the layers hold a mask of an older step
        for s in state.scores:
            s.assign(rng.normal(size=s.shape).astype(np.float32))  # learnt: not the magnitude order
        state.rate_logits.assign(rng.normal(size=len(sizes)).astype(np.float32))
        masks = state.fixed_masks(layers)
        kept = [int(m.sum()) for m in masks]
        assert sum(kept) == round((1 - sparsity) * sum(sizes)), (sparsity, kept)
        assert all(k >= 1 for k in kept)
        np.testing.assert_array_equal(kept, harp_budget.allocate(state.rates().numpy(), sizes, sum(kept)))
        for layer, s, mask, k in zip(layers, state.scores, masks, kept, strict=True):
            np.testing.assert_array_equal(mask, _np_topk_mask(np.abs(np.asarray(s)), k))
            np.testing.assert_array_equal(np.asarray(layer.mask), mask)
            np.testing.assert_array_equal(np.asarray(layer.kernel)[mask == 0], 0.0)  # projected
            layer.mask.assign(tf.ones_like(layer.mask))
            layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype(np.float32))


# -- plan, flags, state -----------------------------------------------------------------------------------
def test_plan_is_pretrain_prune_finetune_and_scales_like_hydra():
    plan = stages.plan(cfg_of(method="harp"))
    assert [(s.name, s.epochs, s.step, s.schedule) for s in plan] == [
        ("pretrain", 100, "standard", "step"),
        ("prune", 20, "prune", "cosine"),
        ("finetune", 100, "standard", "cosine"),
    ]
    assert [s.epochs for s in stages.plan(cfg_of(method="harp", epoch_scale=0.3))] == [30, 6, 30]
    assert plan[2].lr == 0.01 and plan[1].lr == 0.1


@pytest.mark.parametrize(
    "flat, flag",
    [
        ({"method": "harp", "harp_gamma": 0.0}, "--harp_gamma=0.0"),
        ({"method": "harp", "harp_gamma_steps": 0}, "--harp_gamma_steps=0"),
        ({"method": "harp", "harp_init_density": 0.0}, "--harp_init_density=0.0"),
        ({"method": "harp", "harp_init_density": 1.5}, "--harp_init_density=1.5"),
        ({"method": "harp", "score_epochs": 0}, "--score_epochs=0"),
        ({"method": "harp", "prune_schedule": "gradual"}, "--prune_schedule=gradual"),
        ({"method": "harp", "sparsity": 0.0}, "--sparsity=0.0"),
        ({"method": "harp", "structured": True}, "--structured=True"),
    ],
)
def test_bad_harp_settings_are_one_line_naming_the_flag(flat, flag):
    with pytest.raises(ConfigError) as err:
        cfg_of(**flat)
    assert str(err.value).startswith(flag) and "\n" not in str(err.value)


def test_state_round_trips_and_trains_nothing_outside_the_prune_stage():
    state = harp.HarpState([(3, 3, 1, 2), (4, 3)], 0.5, gamma=0.2, gamma_steps=7, layer_names=["conv1", "head"])
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(state))
    assert (clone.gamma0, clone.gamma_steps, clone.sizes) == (0.2, 7, [18, 12])
    assert [v.path for v in clone.trainable_variables] == [v.path for v in state.trainable_variables]
    assert len(state.trainable_variables) == 3  # two score tensors and the rate parameters
    cfg = cfg_of(method="harp")
    model = _model()
    state = harp.HARP().state(cfg, model)["harp_state"]
    assert state.trainable_variables == []  # until the prune stage says so


# -- end to end, and a kill inside the prune stage ---------------------------------------------------------
STAGE_EPOCHS = {"pretrain_epochs": 1, "score_epochs": 3, "finetune_epochs": 1}
# At 99 % every layer starts at 10x the target density (the original's setting), so the budget term is
# far from met for these few steps and gamma keeps growing: 0.01 x (run + 1), six runs over the three
# prune epochs, so it changes inside an epoch too, and across the kill.
RUN = [*TINY, "--sparsity=0.99", "--method=harp", *[f"--{k}={v}" for k, v in STAGE_EPOCHS.items()]]
RUN += ["--harp_gamma_steps=6", "--deterministic"]


@pytest.fixture(scope="module")
def harp_reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("harp_reference")
    proc = run_main(*RUN, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc.stdout


def test_harp_runs_end_to_end_and_exports_standard_layers_at_the_global_budget(harp_reference):
    workdir, stdout = harp_reference
    results = check_run(workdir, "harp", STAGE_EPOCHS, sparsity=0.99)
    layers = results["pruning"]["layers"]
    total = sum(d["total"] for d in layers.values())
    assert sum(d["kept"] for d in layers.values()) == round(0.01 * total)  # exact, not just within rounding
    assert all(d["kept"] >= 1 for d in layers.values())
    found = [re.search(r"harp: gamma=(\S+) kept_fraction=(\S+)", line) for line in stdout.splitlines()]
    found = [(float(m[1]), float(m[2])) for m in found if m]
    # One line per prune epoch; an epoch ends in run 1, 3 and 5 of six, still far above the 1 % target.
    assert [g for g, _ in found] == [0.02, 0.04, 0.06], stdout[-3000:]
    assert all(0.01 < kept < 0.1 for _, kept in found), found  # pulled down from 10x, not there yet


def test_harp_killed_in_its_prune_stage_ends_as_the_uninterrupted_run(harp_reference, tmp_path):
    # The 3rd checkpoint is the prune stage's 2nd epoch: killed while writing it, the run resumes from
    # the prune stage's 1st epoch with its optimizer, scores, rates, gamma and step counter.
    reference, _ = harp_reference
    workdir = tmp_path / "killed"
    proc = run_main(*RUN, f"--workdir={workdir}", env_extra={"FREP_TF_TEST_KILL_AT": "checkpoint:3"})
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:]
    proc = run_main(*RUN, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(prune stage)" in proc.stdout, proc.stdout[-2000:]
    ref = json.loads((reference / "results.json").read_text())
    got = json.loads((workdir / "results.json").read_text())
    assert _strip(got) == _strip(ref)
    for a, b in zip(_exported(workdir).weights, _exported(reference).weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
