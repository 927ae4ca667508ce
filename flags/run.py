"""Flags: Run control: mode, work directory, seed, export formats, devices."""

from absl import flags as absl_flags

from flags._define import define_section
from frep_tf.config import RunConfig


def define_flags(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
    define_section(RunConfig, flag_values)
