"""Flags: The method (FReP or a baseline) and the epochs of its stages."""

from absl import flags as absl_flags

from flags._define import define_section
from frep_tf.config import MethodConfig


def define_flags(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
    define_section(MethodConfig, flag_values)
