"""Print docs/flags.md: every main.py flag (name, default, help) from the dataclasses of frep_tf/config.py.

    python docs/make_flags.py > docs/flags.md

tests/test_docs.py fails when docs/flags.md differs from this script's output. config.py is plain
Python, so neither TensorFlow nor absl is imported.
"""

from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from frep_tf.config import SECTIONS  # noqa: E402

HEADER = """# Flags

Every setting of `main.py` is a flag. Its name, default and help live once, in the dataclasses of
`frep_tf/config.py`; `python main.py --helpfull` prints the same list. This file is generated from them
(`python docs/make_flags.py > docs/flags.md`; `tests/test_docs.py` fails when it is out of date): do not
edit it by hand.

- A boolean flag `--name` is switched off with `--noname` (e.g. `--noensemble`).
- `--flagfile=FILE` reads flags from a file, one per line (see `configs/`); flags given after it override it.
- Bad values and combinations stop the run before any work with one `error:` line naming the flag (exit 2).
- `(paper)` marks the FReP paper's value.
"""


def default_text(value) -> str:
    """The default as one would type it on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return repr(value)


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    lines = [HEADER]
    for section, klass in SECTIONS.items():
        lines += [f"## {section}", "", "| flag | default | meaning |", "|---|---|---|"]
        for field in dataclasses.fields(klass):
            help_text = field.metadata["help"]
            choices = field.metadata.get("choices")
            if choices:
                help_text += f" (one of: {', '.join(choices)})"
            lines.append(f"| `--{field.name}` | `{default_text(field.default)}` | {cell(help_text)} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
