"""Attack strength: every attack breaks an undefended CNN, the targeted ones do at least what one
FGSM step does, and AutoAttack counts a point broken if any of its components broke it.

test_attacks.py checks the attack contract (the ball, [0, 1], seeds) and `acc(x_adv) <= acc(x)`,
which an attack that returns its input unchanged also satisfies; these tests fail on such an attack.
The model is conftest's `natural_cnn` (two conv layers, 5 epochs of natural training on the digits,
clean accuracy > 90 %); the points are the first 100 test digits (1 point = 1 %).

Iteration counts are reduced for speed, everywhere the same: 10 steps for PGD, MIM, APGD and FAB
(the evaluation's defaults are 50 and 100), 100 Square queries (AutoAttack's are 5000).
"""

import numpy as np
import pytest

from frep_tf.attacks import apgd, autoattack, fab, fgsm
from frep_tf.evaluation import robustness

N_POINTS = 100
STEPS = 10
SQUARE_QUERIES = 100
# AutoAttack with every target class (9 of them, as the standard version), fewer iterations.
SETTINGS = autoattack.Settings(
    apgd_steps=STEPS, apgd_target_classes=9, fab_steps=STEPS, fab_target_classes=9, square_queries=SQUARE_QUERIES
)

# Large radius: 1.5 times the 0.2 at which PGD-20 already leaves < 5 % of all 360 test digits correct
# (test_attacks.test_pgd20_breaks_a_natural_cnn), so nearly every point has an adversarial example in
# the ball and an attack that works must find it.
EPS_LARGE = 0.3
# Moderate radius: about half the digits need more than 0.1 (test_attacks), so here a single FGSM step
# leaves a sizeable part of the points correct (checked below) and a comparison with it means something.
EPS_MID = 0.12

ITERATIVE = ("pgd", "mim", "apgd-ce", "apgd-t", "fab-t", "autoattack")


def _points(digits):
    return digits[1][:N_POINTS], digits[3][:N_POINTS]


def _evaluate(model_fn, x, y, eps, attacks, per_point=None):
    return robustness.evaluate_model(
        model_fn,
        x,
        y,
        epsilon=eps,
        attacks=attacks,
        batch_size=N_POINTS,
        pgd_steps=STEPS,
        mim_steps=STEPS,
        square_queries=SQUARE_QUERIES,
        autoattack_settings=SETTINGS,
        sanity=False,  # the sanity checks are tested in test_evaluate.py; here only the attacks
        progress=False,
        per_point=per_point,
    )


def _accuracy(model_fn, x, y):
    return float(np.mean(np.argmax(model_fn(x), -1) == y))


@pytest.fixture(scope="module")
def large_eps(natural_cnn, digits):
    """Every attack of the evaluation driver at EPS_LARGE."""
    x, y = _points(digits)
    attacks = ("clean", "fgsm", "pgd", "mim", "apgd-ce", "apgd-t", "fab-t", "square", "autoattack")
    return _evaluate(natural_cnn, x, y, EPS_LARGE, attacks)


@pytest.fixture(scope="module")
def mid_eps(natural_cnn, digits):
    """FGSM, the AutoAttack components that need gradients, and AutoAttack at EPS_MID, per point."""
    x, y = _points(digits)
    per_point = {}
    results = _evaluate(
        natural_cnn, x, y, EPS_MID, ("clean", "fgsm", "apgd-ce", "apgd-t", "fab-t", "autoattack"), per_point
    )
    return results, per_point


# Bounds, as fractions of clean accuracy (an attack returning its input scores 1.0):
# - iterative gradient attacks: 0.10. Nearly every point has an adversarial example at EPS_LARGE (see
#   there); 10 iterations leave a few points the full budgets would get, so 10 % of clean, not 0.
# - FGSM: 0.25. One step of size eps along the gradient sign at x, with no correction where the
#   network is not linear across the ball, misses more points than an iterative attack.
# - Square: 0.25. Gradient-free random search with 2 % of AutoAttack's query budget.
BOUND = {name: 0.10 for name in ITERATIVE} | {"fgsm": 0.25, "square": 0.25}


@pytest.mark.parametrize("attack", sorted(BOUND))
def test_every_attack_breaks_an_undefended_cnn_at_a_large_eps(attack, large_eps):
    clean = large_eps["clean"]["accuracy"]
    assert clean > 0.9  # the precondition: the bound is a fraction of a high clean accuracy
    accuracy = large_eps[attack]["accuracy"]
    assert large_eps[attack]["samples"] == N_POINTS
    assert accuracy <= BOUND[attack] * clean, f"{attack}: {accuracy:.2f} of {clean:.2f} clean at eps {EPS_LARGE}"


# The public APGD-T and FAB-T (apgd.apgd_t, fab.fab_t: each target class in turn on the points not yet
# fooled) are not what the driver runs (AutoAttack's own per-target loop); they are checked here too,
# with three target classes: at eps 0.3 the first target fools every point, so the later passes have
# no point left (once a crash: the model was run on an empty batch, which TF's CPU conv mis-shapes).
PUBLIC_TARGETED = {
    "apgd_t": lambda f, x, y, eps: apgd.apgd_t(f, x, y, eps=eps, steps=STEPS, n_target_classes=3),
    "fab_t": lambda f, x, y, eps: fab.fab_t(f, x, y, eps=eps, steps=STEPS, n_target_classes=3),
}


@pytest.mark.parametrize("name", sorted(PUBLIC_TARGETED))
def test_public_targeted_attacks_break_an_undefended_cnn(name, natural_cnn, digits):
    x, y = _points(digits)
    clean = _accuracy(natural_cnn, x, y)
    x_adv = np.asarray(PUBLIC_TARGETED[name](natural_cnn, x, y, EPS_LARGE))
    assert np.abs(x_adv - x).max() <= EPS_LARGE + 1e-6
    # Iterative: the 10 % bound above (on an undefended network the runner-up class, the first target,
    # is the nearest wrong class for most points).
    accuracy = _accuracy(natural_cnn, x_adv, y)
    assert accuracy <= 0.10 * clean, f"{name}: {accuracy:.2f} of {clean:.2f} clean at eps {EPS_LARGE}"
    # At least as strong as one FGSM step on the same points (see the driver test below for why).
    fgsm_accuracy = _accuracy(natural_cnn, fgsm.fgsm(natural_cnn, x, y, eps=EPS_MID), y)
    assert fgsm_accuracy >= 0.2  # precondition: FGSM leaves points to compare on
    x_adv = np.asarray(PUBLIC_TARGETED[name](natural_cnn, x, y, EPS_MID))
    accuracy = _accuracy(natural_cnn, x_adv, y)
    assert accuracy <= fgsm_accuracy, f"{name}: {accuracy:.2f}, weaker than FGSM's {fgsm_accuracy:.2f} at eps {EPS_MID}"


@pytest.mark.parametrize("attack", ["apgd-t", "fab-t"])
def test_targeted_attacks_are_at_least_as_strong_as_one_fgsm_step(attack, mid_eps):
    results, _ = mid_eps
    fgsm_accuracy = results["fgsm"]["accuracy"]
    # Precondition: FGSM leaves a sizeable part of the points correct, so `<=` is not `0 <= 0`, and
    # breaks some (it is working).
    assert 0.2 <= fgsm_accuracy <= results["clean"]["accuracy"] - 0.2
    # Targeted at each of the 9 other classes in turn, with 10 steps each, the attack tries every class
    # FGSM's single untargeted step can land in, and iterates; on a network that is close to linear in
    # the ball it finds at least the points FGSM finds.
    assert results[attack]["accuracy"] <= fgsm_accuracy, f"{attack} weaker than FGSM at eps {EPS_MID}"


def test_autoattack_counts_a_point_broken_if_any_component_broke_it(mid_eps):
    results, per_point = mid_eps
    aa = per_point["autoattack"]
    # Standalone APGD-CE is AutoAttack's first stage exactly (same points, seed and seed stream), so
    # every point it broke must be broken in AutoAttack whatever the later stages did.
    missed = int(np.sum(aa & ~per_point["apgd-ce"]))
    assert missed == 0, f"AutoAttack counts {missed} points robust that its first stage, APGD-CE, broke"
    assert not np.any(aa & ~per_point["clean"])
    # ... and APGD-CE alone breaks points here (otherwise the line above tests nothing): at EPS_MID it
    # leaves fewer points correct than clean by more than 20 %.
    assert results["apgd-ce"]["accuracy"] <= results["clean"]["accuracy"] - 0.2
    assert results["autoattack"]["accuracy"] == pytest.approx(float(np.mean(aa)))
    after = results["autoattack"]["after"]
    assert after["apgd-ce"] == results["apgd-ce"]["accuracy"] and results["autoattack"]["accuracy"] == after["square"]
    # The driver's worst case is the per-point AND over every attack it ran.
    worst = np.logical_and.reduce([per_point[a] for a in ("clean", "fgsm", "apgd-ce", "apgd-t", "fab-t", "autoattack")])
    assert results["worst_case"]["accuracy"] == pytest.approx(float(np.mean(worst)))
