"""The attack driver: robust accuracy of any classifier under each attack, with sanity checks.

A model is a callable ``model_fn(x) -> logits`` on float32 inputs in [0, 1]; for a Keras model
pass ``lambda x: model(x, training=False)``. Accuracies count a point as robust only if it is
classified correctly on the clean input and on the attack's output.
"""

import dataclasses
import time

import numpy as np

from frep_tf.attacks import autoattack, common, fgsm, pgd, square
from frep_tf.config import EVAL_ATTACKS as ATTACKS
from frep_tf.evaluation.sanity import run_sanity

ALIASES = {"aa": "autoattack"}
# Each attack's random stream, fixed by name: adding an attack to EVAL_ATTACKS (anywhere) changes no
# other attack's numbers. The values are the positions the attacks had when streams were positional,
# so results measured before stay reproducible; a new attack takes the next unused number.
STREAMS = {
    "clean": 0,
    "fgsm": 1,
    "pgd": 2,
    "mim": 3,
    "square": 4,
    "autoattack": 5,
    "apgd-ce": 6,
    "apgd-t": 7,
    "fab-t": 8,
}
GRADIENT_FREE = ("clean", "square")


def _canonical_attacks(attacks):
    if isinstance(attacks, str):  # "clean,fgsm,pgd" as a flag gives it
        attacks = [a for a in attacks.split(",") if a.strip()]
    names = [ALIASES.get(a.strip().lower(), a.strip().lower()) for a in attacks]
    unknown = [a for a in names if a not in ATTACKS]
    if unknown:
        raise ValueError(f"attacks must be among {ATTACKS}. Received: attacks={list(attacks)}")
    return list(dict.fromkeys(names))  # drops duplicates, keeps the order


def _entry(correct, seconds, **extra):
    accuracy = float(np.mean(correct)) if correct.size else 0.0
    return {"accuracy": accuracy, "samples": int(correct.size), "seconds": round(seconds, 3), **extra}


def _single_attack_fn(name, model_fn, epsilon, s):
    """Batch function (x, y, seed) -> x_adv for the attacks that are not AutoAttack stages."""
    if name == "fgsm":
        return lambda x, y, seed: fgsm.fgsm(model_fn, x, y, eps=epsilon)
    if name in ("pgd", "mim"):
        attack = pgd.pgd if name == "pgd" else pgd.mim
        kwargs = {"decay": s["mim_decay"]} if name == "mim" else {"restarts": s["pgd_restarts"]}
        return lambda x, y, seed: attack(
            model_fn, x, y, eps=epsilon, steps=s[f"{name}_steps"], step_size=s[f"{name}_step_size"], seed=seed, **kwargs
        )
    if name == "square":
        return lambda x, y, seed: square.square(
            model_fn,
            x,
            y,
            eps=epsilon,
            queries=s["square_queries"],
            p_init=s["square_p_init"],
            rescale_schedule=s["square_rescale_schedule"],
            seed=seed,
        )
    raise ValueError(name)


def evaluate_model(
    model_fn,
    x,
    y,
    *,
    epsilon,
    attacks=("clean", "fgsm", "pgd", "mim"),
    batch_size=256,
    seed=0,
    pgd_steps=50,
    pgd_step_size=None,
    pgd_restarts=1,
    mim_steps=50,
    mim_step_size=None,
    mim_decay=1.0,
    square_queries=5000,
    square_p_init=0.8,
    square_rescale_schedule=None,
    autoattack_settings=autoattack.STANDARD,
    sanity=True,
    sweep_factors=(1, 2, 4, 8),
    sweep_samples=100,
    sweep_steps=20,
    progress=True,
    per_point=None,
):
    """Robust accuracy of model_fn on (x, y) under each of `attacks` (L-inf, radius epsilon).

    Returns {attack: {"accuracy", "samples", "seconds"}, "worst_case": the same over all attacks
    run, "sanity": {"passed", "checks"} (if sanity), "config": the settings used}; "clean" is
    always reported and "autoattack" adds "after": its robust accuracy after each stage. Step
    sizes default to epsilon / 4 (2/255 at 8/255, the usual PGD-50 setting); "autoattack" uses the
    published standard settings unless autoattack_settings says otherwise. Square's window schedule
    (made for 10000 queries) is stretched to the budget when `square_rescale_schedule` is True; None
    stretches it for budgets below AutoAttack's 5000 queries (where the unstretched schedule would
    keep large windows to the end) and keeps it as AutoAttack runs it otherwise. The sanity eps sweep
    runs PGD-`sweep_steps` on the first `sweep_samples` points at epsilon times `sweep_factors`
    (capped at 0.5). A dict passed as `per_point` receives, per attack, the boolean array of the
    points still classified correctly (for per-point comparisons with other implementations).
    """
    names = _canonical_attacks(attacks)
    differentiable = getattr(model_fn, "differentiable", True) is not False
    needs_gradients = [a for a in names if a not in GRADIENT_FREE]
    if needs_gradients and not differentiable:
        raise common.NotDifferentiableError(
            f"{needs_gradients} need input gradients, which this model does not have; on a "
            f"TFLite model run {GRADIENT_FREE} or use transfer_accuracy."
        )
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0. Received: epsilon={epsilon}")
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32).reshape(-1)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and of equal length. Received: {len(x)} inputs, {len(y)} labels")
    settings = {
        "epsilon": float(epsilon),
        "batch_size": batch_size,
        "seed": seed,
        "pgd_steps": pgd_steps,
        "pgd_restarts": pgd_restarts,
        "pgd_step_size": epsilon / 4 if pgd_step_size is None else pgd_step_size,
        "mim_steps": mim_steps,
        "mim_decay": mim_decay,
        "mim_step_size": epsilon / 4 if mim_step_size is None else mim_step_size,
        "square_queries": square_queries,
        "square_p_init": square_p_init,
        "square_rescale_schedule": (
            square_queries < autoattack.STANDARD.square_queries
            if square_rescale_schedule is None
            else bool(square_rescale_schedule)
        ),
    }

    results, max_perturbation = {}, {}
    start = time.perf_counter()
    clean_correct = common.predictor(model_fn, x.shape)(x, batch_size) == y
    results["clean"] = _entry(clean_correct, time.perf_counter() - start)
    worst = clean_correct.copy()
    aa_after, square_found = None, None
    for name in names:
        if name == "clean":
            continue
        start, extra = time.perf_counter(), {}
        if name in ("autoattack", "apgd-ce", "apgd-t", "fab-t"):
            stages = autoattack.ATTACKS if name == "autoattack" else (name,)
            res = autoattack.run(
                model_fn,
                x,
                y,
                eps=epsilon,
                attacks=stages,
                settings=autoattack_settings,
                batch_size=batch_size,
                seed=seed,
                progress=progress,
                clean_correct=clean_correct,
            )
            x_adv, correct = res.x_adv, res.robust
            if name == "autoattack":
                aa_after = extra["after"] = res.accuracy_after
                square_found = res.broken_by.get("square")
                settings["autoattack"] = dataclasses.asdict(autoattack_settings)
        else:
            fn = _single_attack_fn(name, model_fn, epsilon, settings)
            compiled = common.compile_batch_fn(fn, x.shape, model_fn=model_fn)
            # The seed stream is tied to the attack, not to its position in `attacks`.
            x_adv, still_correct = common.run_batched(
                compiled,
                x,
                y,
                batch_size=batch_size,
                seed=seed,
                stream=STREAMS[name],
                desc=name,
                progress=progress,
            )
            correct = clean_correct & still_correct
        results[name] = _entry(correct, time.perf_counter() - start, **extra)
        max_perturbation[name] = float(np.max(np.abs(x_adv - x)))
        worst &= correct
        if per_point is not None:
            per_point[name] = correct
    if per_point is not None:
        per_point["clean"] = clean_correct
    if len(results) > 1:
        results["worst_case"] = _entry(worst, sum(r["seconds"] for r in results.values()))

    if sanity:
        results["sanity"] = run_sanity(
            model_fn,
            x,
            y,
            clean_correct,
            results,
            aa_after,
            square_found,
            max_perturbation,
            epsilon=epsilon,
            batch_size=batch_size,
            seed=seed,
            differentiable=differentiable,
            sweep_factors=sweep_factors,
            sweep_samples=sweep_samples,
            sweep_steps=sweep_steps,
            progress=progress,
        )
    results["config"] = settings
    return results
