"""Defines absl flags from the config dataclasses: name, default and help come from the field."""

from __future__ import annotations

import dataclasses

from absl import flags as absl_flags


def define_section(klass, flag_values: absl_flags.FlagValues) -> None:
    for field in dataclasses.fields(klass):
        if field.name in flag_values:
            continue
        help_text = field.metadata["help"]
        choices = field.metadata.get("choices")
        if choices:
            help_text += f" ({' | '.join(choices)})"
        default = field.default
        if isinstance(default, bool):
            absl_flags.DEFINE_bool(field.name, default, help_text, flag_values=flag_values)
        elif isinstance(default, int):
            absl_flags.DEFINE_integer(field.name, default, help_text, flag_values=flag_values)
        elif isinstance(default, float):
            absl_flags.DEFINE_float(field.name, default, help_text, flag_values=flag_values)
        else:
            # Strings with choices are checked by config.validate, so every bad value gets the
            # same one-line message shape.
            absl_flags.DEFINE_string(field.name, default, help_text, flag_values=flag_values)
