"""Flags: Architecture and reparameterization."""

from absl import flags as absl_flags

from flags._define import define_section
from frep_tf.config import ModelConfig


def define_flags(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
    define_section(ModelConfig, flag_values)
