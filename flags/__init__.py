"""absl flag definitions, grouped by concern; only main.py (and tests through `define_all`) use them.

Each module's `define_flags(flag_values)` defines its group from the config dataclasses, so a flag's
name, default and help live once, in frep_tf/config.py.
"""

from __future__ import annotations

import dataclasses

from absl import flags as absl_flags

from flags import attack, data, method, model, prune, run, train
from frep_tf.config import BASELINE_DEFAULTS, BASELINES, SECTIONS, Config

GROUPS = (data, model, train, prune, method, attack, run)


def define_module():
    """The module that defines the flags (absl attributes flags to it), for `--help`."""
    from flags import _define

    return _define


def define_all(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
    for group in GROUPS:
        group.define_flags(flag_values)


def config_flag_names() -> list[str]:
    return [f.name for klass in SECTIONS.values() for f in dataclasses.fields(klass)]


def config_from_flags(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> Config:
    """The Config of the command line. A baseline method (lwm, admm, hydra, mad) trains plain layers
    with PGD and no temporal ensemble unless those flags are given (config.BASELINE_DEFAULTS)."""
    values = {name: flag_values[name].value for name in config_flag_names()}
    if values["method"] in BASELINES:
        for name, value in BASELINE_DEFAULTS.items():
            if not flag_values[name].present:
                values[name] = value
    return Config.from_flat(values)
