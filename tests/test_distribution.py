"""Losses are scaled per replica correctly: MirroredStrategy on 2 logical CPUs == one device."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
def test_mirrored_fit_matches_one_device():
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "mirrored_check.py"), "sre", "natural"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for objective, losses in result.items():
        one, two = np.array(losses["one"]), np.array(losses["mirrored"])
        doubled = np.array(losses["one_doubled_lr"])
        assert len(one) == 4 and not np.allclose(one[0], one[-1])  # training moved the loss
        np.testing.assert_allclose(two, one, rtol=2e-4, err_msg=objective)
        # A replica-scaling error doubles the effective step: that is visibly farther away.
        assert np.abs(doubled - one).max() > 20 * np.abs(two - one).max(), objective


def test_weight_decay_is_not_multiplied_by_the_replicas():
    """Zero data gradient: the update is weight decay alone, and must not depend on the device count."""
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "mirrored_decay_check.py"), "sre", "natural"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    lr, momentum, decay, steps = result["lr"], result["momentum"], result["decay"], result["steps"]
    # SGD with momentum on g = decay * v, by hand: v <- v - lr * m, m <- momentum * m + decay * v.
    factor, velocity_factor = 1.0, 0.0
    for _ in range(steps):
        velocity_factor = momentum * velocity_factor + decay * factor
        factor -= lr * velocity_factor
    for objective, run in result["runs"].items():
        assert set(run["one"]) == set(run["mirrored"]) and len(run["one"]) >= 6, objective
        for path, start in run["initial"].items():
            start, one, two = np.array(start), np.array(run["one"][path]), np.array(run["mirrored"][path])
            np.testing.assert_allclose(one, factor * start, rtol=1e-5, atol=1e-7, err_msg=f"{objective} {path}")
            np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-7, err_msg=f"{objective} {path}")
