"""A stage-length flag of 0 never leaves a stage out: --pretrain_epochs, --admm_epochs and --score_epochs of 0
are refused in one line naming the flag (as --epochs=0 is), whatever the method; --finetune_epochs=0, its
default, is the method's own count."""

import os

import pytest

from frep_tf.config import METHODS, Config, ConfigError
from frep_tf.methods import stages
from frep_tf.validation import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(**flat):
    base = {"workdir": "", "mode": "evaluate", "model": __file__, "sparsity": 0.9}
    return validate(Config.from_flat({**base, **flat}))


@pytest.mark.parametrize("flag", ["pretrain_epochs", "admm_epochs", "score_epochs"])
@pytest.mark.parametrize("method", ["frep", "admm", "hydra", "harp", "mad"])
def test_a_stage_of_zero_epochs_is_refused_in_one_line(flag, method):
    assert method in METHODS
    with pytest.raises(ConfigError) as err:
        _cfg(method=method, parameterization="plain", **{flag: 0})
    message = str(err.value)
    assert message.startswith(f"--{flag}=0: must be a positive integer") and "\n" not in message


@pytest.mark.parametrize("method, own", [("admm", 100), ("hydra", 100), ("harp", 100), ("mad", 139)])
def test_finetune_epochs_zero_is_the_methods_own_count(method, own):
    plan = stages.plan(_cfg(method=method, parameterization="plain", finetune_epochs=0))
    assert plan[-1].epochs == own
    assert [s.name for s in plan][0] == "pretrain" and plan[0].epochs == 100
    assert stages.plan(_cfg(method=method, parameterization="plain", finetune_epochs=7))[-1].epochs == 7
    with pytest.raises(ConfigError, match=r"^--finetune_epochs=-1: must be >= 0 \(0 = the method's own count\)"):
        _cfg(method=method, finetune_epochs=-1)
