"""Every absl flag, defined from the Config dataclasses (frep_tf/config.py): a flag's name, default, help
and choices live once, in a dataclass field. Only main.py (and tests, through `define_all`) use this
module; the library takes a Config and never reads flags.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import flags as absl_flags

from frep_tf.config import BASELINE_DEFAULTS, BASELINES, SECTIONS, Config, ConfigError, FlagParseError


def define_all(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
    """Define one flag per Config field, section by section (the order `--help` lists them in)."""
    for klass in SECTIONS.values():
        for field in dataclasses.fields(klass):
            if field.name not in flag_values:
                _define(field, flag_values)


def _define(field: dataclasses.Field, flag_values: absl_flags.FlagValues) -> None:
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
        # Strings with choices are checked by frep_tf.validation, so every bad value gets the same
        # one-line message shape.
        absl_flags.DEFINE_string(field.name, default, help_text, flag_values=flag_values)


def define_module():
    """The module that defines the flags (absl attributes flags to it), for `--help`."""
    return sys.modules[__name__]


def config_flag_names() -> list[str]:
    return [f.name for klass in SECTIONS.values() for f in dataclasses.fields(klass)]


def config_from_flags(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> Config:
    """The Config of the command line. A baseline method (lwm, admm, hydra, mad, lottery, iwi) trains
    plain layers with PGD and no temporal ensemble, as its paper does (config.BASELINE_DEFAULTS). A
    value that would turn it into something else - given on the command line or inherited from a
    flagfile written for FReP - is refused unless --baseline_variant says it is meant."""
    values = {name: flag_values[name].value for name in config_flag_names()}
    if values["method"] in BASELINES:
        changed = []
        for name, default in BASELINE_DEFAULTS.items():
            if not flag_values[name].present:
                values[name] = default
            elif values[name] != default:
                changed.append(flag_values[name].serialize())
        if changed and not values["baseline_variant"]:
            paper = " ".join(_flag_text(k, v) for k, v in BASELINE_DEFAULTS.items())
            raise ConfigError(
                f"--method={values['method']} trains {paper} as its paper does; {' '.join(changed)} (given here or "
                "in a flagfile) would train something else: drop it, or add --baseline_variant to train that variant"
            )
    return Config.from_flat(values)


def parse_args(args: list[str]) -> Config:
    """The validated Config `python main.py ARGS` would run with; ConfigError (one line) if it would not
    start, FlagParseError when a flag is unknown or its value does not parse. The experiment runner
    checks every cell with it before any cell runs."""
    from frep_tf.validation import validate

    values = absl_flags.FlagValues()
    define_all(values)
    try:
        values(["main.py", *args])
    except absl_flags.Error as exc:
        raise FlagParseError(str(exc).splitlines()[0].removeprefix("ERROR::").strip()) from None
    return validate(config_from_flags(values))


def _flag_text(name: str, value) -> str:
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    return f"--{name}={value}"
