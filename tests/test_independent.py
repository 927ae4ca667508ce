"""Our attacks against an independent implementation (IBM's adversarial-robustness-toolbox, ART) on
the same model. The number we publish (AutoAttack, and the worst case over our attacks) must never be
above any ART attack, point by point; single-restart attacks of the same algorithm and budget agree
within seed noise (on 4 models x 2 eps, ours minus ART ranged over -1..+2 points of 120 for PGD-20 and
APGD-CE, 0 for FGSM, -10..-1 for Square)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from frep_tf import evaluation
from frep_tf.attacks import autoattack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 0.1
N = 120


@pytest.fixture(scope="module")
def art_classifier(natural_cnn):
    from art.estimators.classification import TensorFlowV2Classifier

    return TensorFlowV2Classifier(
        model=lambda t, training=False: natural_cnn(t),
        nb_classes=10,
        input_shape=(8, 8, 1),
        loss_object=keras.losses.CategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )


def _art_robust(classifier, attack, x, y):
    """Per point: still classified correctly after ART's attack."""
    np.random.seed(0)
    x_adv = attack.generate(x, y=np.eye(10, dtype="float32")[y])
    assert np.abs(x_adv - x).max() <= EPS + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    return (classifier.predict(x).argmax(1) == y) & (classifier.predict(x_adv).argmax(1) == y)


def test_ours_not_weaker_than_art(natural_cnn, art_classifier, digits):
    from art.attacks import evasion

    x, y = digits[1][:N], digits[3][:N]
    common = {"norm": np.inf, "eps": EPS, "batch_size": N, "verbose": False}
    theirs = {
        "fgsm": evasion.FastGradientMethod(art_classifier, eps=EPS),
        "pgd": evasion.ProjectedGradientDescent(
            art_classifier, eps_step=EPS / 4, max_iter=20, num_random_init=1, **common
        ),
        "apgd-ce": evasion.AutoProjectedGradientDescent(
            art_classifier, eps_step=2 * EPS, max_iter=20, nb_random_init=1, loss_type="cross_entropy", **common
        ),
        "square": evasion.SquareAttack(art_classifier, max_iter=300, p_init=0.8, **common),
    }
    theirs = {name: _art_robust(art_classifier, attack, x, y) for name, attack in theirs.items()}
    ours = {}
    evaluation.evaluate_model(
        natural_cnn,
        x,
        y,
        epsilon=EPS,
        attacks=("clean", "fgsm", "pgd", "apgd-ce", "square", "autoattack"),
        pgd_steps=20,
        square_queries=300,
        autoattack_settings=autoattack.Settings(
            apgd_steps=20, apgd_target_classes=3, fab_steps=20, fab_target_classes=3, square_queries=300
        ),
        batch_size=N,
        sanity=False,
        progress=False,
        per_point=ours,
    )
    report = {name: (int(ours[name].sum()), int(theirs[name].sum())) for name in theirs}
    report["autoattack"] = int(ours["autoattack"].sum())
    # The attacks must have something to do: most points are classified, PGD breaks many of them.
    assert ours["clean"].sum() > 0.9 * N and theirs["pgd"].sum() < 0.8 * ours["clean"].sum(), report

    # The published figures: never above any ART attack, and no point ART broke survives them.
    worst = np.logical_and.reduce([ours[name] for name in theirs] + [ours["autoattack"]])
    for name, robust in theirs.items():
        assert ours["autoattack"].sum() <= robust.sum(), (name, report)
        assert not np.any(worst & ~robust), f"ART {name} broke points all of ours left robust: {report}"
    # Same algorithm, same budget: FGSM is deterministic, so equal; Square draws its windows per image
    # (the reference, and ART, one per batch), so at least as strong; PGD and APGD-CE within seed noise.
    assert report["fgsm"][0] == report["fgsm"][1], report
    assert report["square"][0] <= report["square"][1], report
    for name in ("pgd", "apgd-ce"):
        assert abs(report[name][0] - report[name][1]) <= 2, report


def test_independent_benchmark_end_to_end(natural_cnn, tmp_path):
    """benchmarks/independent_attacks.py on an exported .keras file, ART only (torch is optional)."""
    model_path = tmp_path / "model.keras"
    natural_cnn.keras_model.save(model_path)
    out = tmp_path / "independent.json"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "independent_attacks.py"), f"--model={model_path}"]
    command += [
        "--libraries=art",
        "--attacks=fgsm,pgd",
        "--samples=60",
        "--epsilon=0.05",
        "--seeds=0,1",
        f"--out={out}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["samples"] == 60 and report["seeds"] == [0, 1] and report["headline_passed"]
    rows = {row["attack"]: row for row in report["rows"]}
    assert set(rows) == {"fgsm", "pgd"}
    assert len(rows["pgd"]["ours"]) == 2 and len(rows["pgd"]["art"]) == 2
    assert report["our_worst_case"] <= min(rows["pgd"]["art"])
    assert "| pgd |" in done.stdout and "headline: passed" in done.stdout

    bad = subprocess.run(
        [*command[:2], "--model=missing.h5", "--libraries=art"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "--model=missing.h5: expected an existing .keras file" in bad.stderr
