"""frep_tf.run.setup builds the RobustModel a run trains: every training setting of the Config reaches it."""

import dataclasses
import inspect

from frep_tf.config import Config, TrainConfig
from frep_tf.data import DatasetInfo

INFO = DatasetInfo("tiny", (8, 8, 1), 10, 64, 0, 0, "none")


def test_every_training_setting_of_the_config_reaches_the_model():
    from frep_tf.run.setup import build_robust_model
    from frep_tf.training.robust_model import RobustModel

    changed = {
        "objective": "fgsm",
        "epsilon": 0.2,
        "perturbation": "nfgsm",
        "nfgsm_noise": 1.5,
        "sre_lambda": 3.0,
        "pgd_steps": 2,
        "pgd_step_size": 0.05,
        "trades_beta": 5.0,
        "attack_bn": "eval",
    }
    cfg = Config.from_flat({"dataset": "digits", "arch": "small_cnn", "width": 0.25, **changed})
    model = build_robust_model(cfg, INFO)
    for name, value in changed.items():
        assert getattr(model, name) == value, name
    # A setting both TrainConfig and RobustModel know but this test does not change would go unchecked.
    shared = {f.name for f in dataclasses.fields(TrainConfig)} & set(inspect.signature(RobustModel).parameters)
    assert shared - {"step_size", "weight_decay"} <= set(changed), shared - set(changed)
