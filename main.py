"""frep_tf: train adversarially robust, extremely sparse networks with FReP; evaluate any classifier.

    python main.py --flagfile=configs/quickstart.cfg --workdir=runs/quickstart
    python main.py --arch=resnet18 --sparsity=0.99 --workdir=runs/r18_s99
    python main.py --mode=evaluate --model=runs/r18_s99/export/model.keras --dataset=cifar10

Parses flags, validates them into a frozen Config (bad values stop here with one line and exit
status 2), then runs frep_tf.pipeline.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, logging  # noqa: E402
from absl import flags as absl_flags  # noqa: E402

import flags  # noqa: E402

flags.define_all(absl_flags.FLAGS)
absl_flags.adopt_module_key_flags(flags.define_module())  # so `--help` lists every setting


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _parse(argv):
    try:
        return absl_flags.FLAGS(argv)
    except absl_flags.Error as exc:
        _fail(str(exc).splitlines()[0])


def main(argv) -> None:
    logging.set_verbosity(logging.WARNING)  # TF's SavedModel writer logs every step at INFO
    if len(argv) > 1:
        _fail(f"unexpected argument(s) {' '.join(argv[1:])}; every setting is a --flag (see --help)")
    from frep_tf.config import ConfigError, validate

    try:
        cfg = validate(flags.config_from_flags(absl_flags.FLAGS))
    except ConfigError as exc:
        _fail(str(exc))
    from frep_tf import pipeline
    from frep_tf.data import DatasetError
    from frep_tf.model_io import ModelFileError

    try:
        pipeline.run(cfg)
    except (ConfigError, DatasetError, ModelFileError) as exc:
        _fail(str(exc))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
