"""Flags: Robust training objective, optimizer and temporal ensemble."""

from absl import flags as absl_flags

from flags._define import define_section
from frep_tf.config import EnsembleConfig, TrainConfig


def define_flags(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
    define_section(TrainConfig, flag_values)
    define_section(EnsembleConfig, flag_values)
