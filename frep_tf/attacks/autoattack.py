"""AutoAttack (Croce & Hein 2020), L-inf, `standard` version: APGD-CE, APGD-T, FAB-T, Square.

Each attack runs only on the points every earlier one left robust; a point is robust only if it
is classified correctly on the clean input and on what every attack found (worst case per point).
The settings are those of the reference implementation's standard version (fra31/auto-attack,
`set_version('standard')`): 100 iterations and 1 restart for APGD-CE, APGD-T (9 target classes)
and FAB-T (9 target classes), Square with 5000 queries, p_init 0.8 and the unrescaled schedule.
"""

import dataclasses
import time

import numpy as np
import tensorflow as tf

from frep_tf.attacks import apgd, common, fab, square

ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


@dataclasses.dataclass(frozen=True)
class Settings:
    """AutoAttack hyper-parameters; the defaults are the published standard version."""

    apgd_steps: int = 100
    apgd_restarts: int = 1
    apgd_rho: float = 0.75
    apgd_target_classes: int = 9
    fab_steps: int = 100
    fab_restarts: int = 1
    fab_target_classes: int = 9
    fab_alpha_max: float = 0.1
    fab_eta: float = 1.05
    fab_beta: float = 0.9
    square_queries: int = 5000
    square_p_init: float = 0.8
    square_rescale_schedule: bool = False


STANDARD = Settings()


@dataclasses.dataclass(frozen=True)
class Result:
    """x_adv: worst-case inputs; robust: per point; accuracy_after: robust accuracy after
    "clean" and after each attack in turn; seconds: per attack; broken_by: per attack, the
    points it was the first to break."""

    x_adv: np.ndarray
    robust: np.ndarray
    accuracy_after: dict
    seconds: dict
    broken_by: dict = dataclasses.field(default_factory=dict)

    @property
    def accuracy(self):
        return float(np.mean(self.robust)) if self.robust.size else 0.0


def _stages(model_fn, eps, settings, n_classes):
    """Per attack: (batch function, extra input specs, list of extra args, one per pass)."""
    s = settings

    def apgd_ce(x, y, seed):
        return apgd.apgd(
            model_fn, x, y, eps=eps, steps=s.apgd_steps, restarts=s.apgd_restarts, loss="ce", rho=s.apgd_rho, seed=seed
        )

    def apgd_t(x, y, seed, rank):
        return apgd.apgd_targeted(
            model_fn,
            x,
            y,
            eps=eps,
            target_rank=rank,
            steps=s.apgd_steps,
            restarts=s.apgd_restarts,
            rho=s.apgd_rho,
            seed=seed,
        )

    def fab_t(x, y, seed, rank):
        return fab.fab_targeted(
            model_fn,
            x,
            y,
            eps=eps,
            target_rank=rank,
            steps=s.fab_steps,
            restarts=s.fab_restarts,
            alpha_max=s.fab_alpha_max,
            eta=s.fab_eta,
            beta=s.fab_beta,
            seed=seed,
        )

    def square_(x, y, seed):
        return square.square(
            model_fn,
            x,
            y,
            eps=eps,
            queries=s.square_queries,
            p_init=s.square_p_init,
            rescale_schedule=s.square_rescale_schedule,
            seed=seed,
        )

    rank_spec = (tf.TensorSpec((), tf.int32),)

    def ranks(n_targets):
        # Target classes beyond the number of wrong classes do not exist.
        return [(r,) for r in range(2, min(n_targets, n_classes - 1) + 2)]

    return {
        "apgd-ce": (apgd_ce, (), [()]),
        "apgd-t": (apgd_t, rank_spec, ranks(s.apgd_target_classes)),
        "fab-t": (fab_t, rank_spec, ranks(s.fab_target_classes)),
        "square": (square_, (), [()]),
    }


def run(
    model_fn,
    x,
    y,
    *,
    eps,
    attacks=ATTACKS,
    settings=STANDARD,
    batch_size=250,
    seed=0,
    progress=True,
    clean_correct=None,
):
    """Runs `attacks` in sequence on the still-robust points -> Result (numpy arrays).

    clean_correct: whether each clean input is classified correctly, if already known."""
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        raise ValueError(f"attacks must be among {ATTACKS}. Received: {unknown}")
    if any(a != "square" for a in attacks):
        common.require_gradients(model_fn)
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    n_classes = common.num_classes(model_fn, x)
    stages = _stages(model_fn, eps, settings, n_classes)

    start = time.perf_counter()
    if clean_correct is None:
        clean_correct = common.predictor(model_fn, x.shape)(x, batch_size) == y
    robust = np.array(clean_correct, bool)
    x_adv = x.copy()
    accuracy_after = {"clean": float(np.mean(robust)) if len(y) else 0.0}
    seconds = {"clean": time.perf_counter() - start}
    broken_by = {}
    for stage, name in enumerate(attacks):
        start = time.perf_counter()
        robust_before = robust.copy()
        fn, extra_specs, passes = stages[name]
        compiled = common.compile_batch_fn(fn, x.shape, extra_specs, model_fn=model_fn)
        for n, extra in enumerate(passes):
            todo = np.flatnonzero(robust)
            if todo.size == 0:
                break
            desc = name if len(passes) == 1 else f"{name} {n + 1}/{len(passes)}"
            adv, correct = common.run_batched(
                compiled,
                x[todo],
                y[todo],
                batch_size=batch_size,
                seed=seed,
                stream=16 * stage + n,
                extra=extra,
                desc=desc,
                progress=progress,
            )
            x_adv[todo[~correct]] = adv[~correct]
            robust[todo[~correct]] = False
        accuracy_after[name] = float(np.mean(robust)) if len(y) else 0.0
        seconds[name] = time.perf_counter() - start
        broken_by[name] = robust_before & ~robust
    return Result(x_adv=x_adv, robust=robust, accuracy_after=accuracy_after, seconds=seconds, broken_by=broken_by)


def standard(model_fn, x, y, *, eps, batch_size=250, seed=0, progress=True):
    """AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square with the published settings."""
    return run(
        model_fn, x, y, eps=eps, attacks=ATTACKS, settings=STANDARD, batch_size=batch_size, seed=seed, progress=progress
    )
