"""Losses are scaled per replica correctly: MirroredStrategy on 2 logical CPUs == one device."""

import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


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
