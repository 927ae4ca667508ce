"""The sanity checks of an evaluation (docs/evaluation.md), and the epsilon sweep they use."""

import numpy as np
import tensorflow as tf

from frep_tf.attacks import checks, common, pgd
from frep_tf.config import EVAL_ATTACKS as ATTACKS

SWEEP_MAX_EPS = 0.5  # an L-inf ball of radius 0.5 reaches the constant mid-grey image


def eps_sweep(model_fn, x, y, eps_values, *, steps, batch_size, seed=0, progress=True, clean_correct=None):
    """PGD-`steps` robust accuracy (step eps/4) at each eps; one graph trace for all of them."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    if clean_correct is None:
        clean_correct = common.predictor(model_fn, x.shape)(x, batch_size) == y
    compiled = common.compile_batch_fn(
        lambda xb, yb, s, eps: pgd.pgd(model_fn, xb, yb, eps=eps, steps=steps, step_size=eps / 4, seed=s),
        x.shape,
        (tf.TensorSpec((), tf.float32),),
        model_fn=model_fn,
    )
    accuracies = []
    for i, eps in enumerate(eps_values):
        _, ok = common.run_batched(
            compiled,
            x,
            y,
            batch_size=batch_size,
            seed=seed,
            stream=100 + i,
            extra=(np.float32(eps),),
            desc=f"sweep eps={eps:.3g}",
            progress=progress,
        )
        accuracies.append(float(np.mean(clean_correct & ok)))
    return accuracies


def run_sanity(
    model_fn,
    x,
    y,
    clean_correct,
    results,
    aa_after,
    square_found,
    max_perturbation,
    *,
    epsilon,
    batch_size,
    seed,
    differentiable,
    sweep_factors,
    sweep_samples,
    sweep_steps,
    progress,
):
    n = len(y)
    accuracies = {k: v["accuracy"] for k, v in results.items() if k in ATTACKS}
    head = slice(0, min(n, max(batch_size, 1)))
    found = {
        "order": checks.check_order(accuracies),
        "black_box": checks.check_black_box(accuracies, samples=n),
        "square_in_autoattack": (
            checks.check_square_in_autoattack(aa_after, samples=n)
            if aa_after
            else {"passed": None, "message": "AutoAttack was not run"}
        ),
        "perturbation": checks.check_perturbation(max_perturbation, epsilon),
        "zero_gradients": checks.check_zero_gradients(model_fn, x[head], y[head]),
        "deterministic": checks.check_deterministic(model_fn, x[head]),
        "logits": checks.check_logits(model_fn, x[head]),
    }
    if differentiable and square_found is not None:
        checks.explain_square_finds(
            found["square_in_autoattack"],
            model_fn,
            x[square_found],
            y[square_found],
            eps=epsilon,
            batch_size=batch_size,
            seed=seed,
        )
    if differentiable and sweep_factors and sweep_samples > 0 and epsilon > 0:
        eps_values = sorted({min(float(f) * epsilon, SWEEP_MAX_EPS) for f in sweep_factors})
        sub = slice(0, min(n, sweep_samples))
        sweep_acc = eps_sweep(
            model_fn,
            x[sub],
            y[sub],
            eps_values,
            steps=sweep_steps,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
            clean_correct=clean_correct[sub],
        )
        found["eps_sweep"] = checks.check_eps_sweep(eps_values, sweep_acc)
    else:
        found["eps_sweep"] = {"passed": None, "message": "not run (no gradients, or disabled)"}
    return {"passed": checks.all_passed(found), "checks": found}
