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
    differentiable = _check_differentiable(model_fn, names)
    x, y = _check_data(x, y, epsilon)
    settings = _settings(
        epsilon=epsilon,
        batch_size=batch_size,
        seed=seed,
        pgd_steps=pgd_steps,
        pgd_step_size=pgd_step_size,
        pgd_restarts=pgd_restarts,
        mim_steps=mim_steps,
        mim_step_size=mim_step_size,
        mim_decay=mim_decay,
        square_queries=square_queries,
        square_p_init=square_p_init,
        square_rescale_schedule=square_rescale_schedule,
    )
    run = _AttackRun(model_fn, x, y, epsilon, batch_size, seed, settings, autoattack_settings, progress)
    results = run.attack_all(names, per_point)
    if sanity:
        results["sanity"] = run.sanity(results, differentiable, sweep_factors, sweep_samples, sweep_steps)
    results["config"] = settings
    return results


def _settings(
    *,
    epsilon,
    batch_size,
    seed,
    pgd_steps,
    pgd_step_size,
    pgd_restarts,
    mim_steps,
    mim_step_size,
    mim_decay,
    square_queries,
    square_p_init,
    square_rescale_schedule,
) -> dict:
    """The settings the attacks run with, defaults resolved (results' "config")."""
    return {
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


def _check_differentiable(model_fn, names) -> bool:
    """Whether model_fn has input gradients; raises NotDifferentiableError if an attack needs them and it has none."""
    differentiable = getattr(model_fn, "differentiable", True) is not False
    needs_gradients = [a for a in names if a not in GRADIENT_FREE]
    if needs_gradients and not differentiable:
        raise common.NotDifferentiableError(
            f"{needs_gradients} need input gradients, which this model does not have; on a "
            f"TFLite model run {GRADIENT_FREE} or use transfer_accuracy."
        )
    return differentiable


def _check_data(x, y, epsilon):
    """(x float32, y int32 flat), after checking epsilon and that x and y match."""
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0. Received: epsilon={epsilon}")
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32).reshape(-1)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and of equal length. Received: {len(x)} inputs, {len(y)} labels")
    return x, y


class _AttackRun:
    """The attacks of one `evaluate_model` call on (x, y), and what its sanity checks read afterwards:
    the clean predictions, the largest perturbation of each attack, AutoAttack's accuracy after each
    stage and the points Square broke."""

    def __init__(self, model_fn, x, y, epsilon, batch_size, seed, settings, autoattack_settings, progress):
        self.model_fn, self.x, self.y, self.epsilon = model_fn, x, y, epsilon
        self.batch_size, self.seed, self.settings = batch_size, seed, settings
        self.autoattack_settings, self.progress = autoattack_settings, progress
        self.max_perturbation: dict = {}
        self.clean_correct = None
        self.aa_after, self.square_found = None, None

    def attack_all(self, names, per_point) -> dict:
        """{attack: entry} for clean and every attack in `names`, and "worst_case" over them."""
        start = time.perf_counter()
        self.clean_correct = common.predictor(self.model_fn, self.x.shape)(self.x, self.batch_size) == self.y
        results = {"clean": _entry(self.clean_correct, time.perf_counter() - start)}
        worst = self.clean_correct.copy()
        for name in names:
            if name == "clean":
                continue
            start, extra = time.perf_counter(), {}
            x_adv, correct = self.attack(name, extra)
            results[name] = _entry(correct, time.perf_counter() - start, **extra)
            self.max_perturbation[name] = float(np.max(np.abs(x_adv - self.x)))
            worst &= correct
            if per_point is not None:
                per_point[name] = correct
        if per_point is not None:
            per_point["clean"] = self.clean_correct
        if len(results) > 1:
            results["worst_case"] = _entry(worst, sum(r["seconds"] for r in results.values()))
        return results

    def sanity(self, results, differentiable, sweep_factors, sweep_samples, sweep_steps) -> dict:
        """The sanity checks (frep_tf.evaluation.sanity) of the attacks' `results`."""
        return run_sanity(
            self.model_fn,
            self.x,
            self.y,
            self.clean_correct,
            results,
            self.aa_after,
            self.square_found,
            self.max_perturbation,
            epsilon=self.epsilon,
            batch_size=self.batch_size,
            seed=self.seed,
            differentiable=differentiable,
            sweep_factors=sweep_factors,
            sweep_samples=sweep_samples,
            sweep_steps=sweep_steps,
            progress=self.progress,
        )

    def attack(self, name, extra: dict):
        """(x_adv, points still classified correctly) of one attack; AutoAttack adds "after" to `extra`."""
        if name in ("autoattack", "apgd-ce", "apgd-t", "fab-t"):
            stages = autoattack.ATTACKS if name == "autoattack" else (name,)
            res = autoattack.run(
                self.model_fn,
                self.x,
                self.y,
                eps=self.epsilon,
                attacks=stages,
                settings=self.autoattack_settings,
                batch_size=self.batch_size,
                seed=self.seed,
                progress=self.progress,
                clean_correct=self.clean_correct,
            )
            if name == "autoattack":
                self.aa_after = extra["after"] = res.accuracy_after
                self.square_found = res.broken_by.get("square")
                self.settings["autoattack"] = dataclasses.asdict(self.autoattack_settings)
            return res.x_adv, res.robust
        fn = _single_attack_fn(name, self.model_fn, self.epsilon, self.settings)
        compiled = common.compile_batch_fn(fn, self.x.shape, model_fn=self.model_fn)
        # The seed stream is tied to the attack, not to its position in `attacks`.
        x_adv, still_correct = common.run_batched(
            compiled,
            self.x,
            self.y,
            batch_size=self.batch_size,
            seed=self.seed,
            stream=STREAMS[name],
            desc=name,
            progress=self.progress,
        )
        return x_adv, self.clean_correct & still_correct
