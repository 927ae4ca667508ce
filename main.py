"""frep_tf: train adversarially robust, extremely sparse networks with FReP; evaluate any classifier.

    python main.py --flagfile=configs/quickstart.cfg --workdir=runs/quickstart
    python main.py --arch=resnet18 --sparsity=0.99 --workdir=runs/r18_s99
    python main.py --mode=evaluate --model=runs/r18_s99/export/model.keras --dataset=cifar10
    python main.py --mode=experiment --experiment=configs/experiments/fashion_frep_vs_ori.cfg --workdir=runs/fo
    python main.py --mode=report --workdir=runs/fo
    python main.py --mode=report --workdir=runs/fo --experiment=configs/experiments/fashion_frep_vs_ori.cfg
    python main.py --mode=cost --experiment=configs/experiments/fashion_frep_vs_ori.cfg --workdir=runs/fo

Parses flags, validates them into a frozen Config, then runs it (frep_tf.run). The same command
again resumes an interrupted run, or prints the results of a finished one.

Exit status: 0 done (or already done); 2 bad input: a flag, flag combination, dataset, model file,
workdir or checkpoint that cannot be used, reported as one line starting with "error:" before
anything is written to the workdir; 3 the run failed: training diverged (NaN/Inf loss), pruning would
cut the network, an export did not reproduce the model, or anything unanticipated (disk full, out of
memory, a TensorFlow error: one `error:` line naming the stage, the traceback in <workdir>/error.log);
in --mode=experiment, a cell failed (the other cells still ran; report.md lists the failure). --mode=cost
writes <workdir>/cost.json only once every measurement is done.
The last good checkpoint is always kept.
"""

from __future__ import annotations

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, logging  # noqa: E402
from absl import flags as absl_flags  # noqa: E402

import flags  # noqa: E402

flags.define_all(absl_flags.FLAGS)
absl_flags.adopt_module_key_flags(flags.define_module())  # so `--help` lists every setting


_CONFIG_FLAGS = flags.config_flag_names()
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 3


def _fail(message: str, status: int = EXIT_BAD_INPUT) -> None:
    one_line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"error: {one_line}", file=sys.stderr, flush=True)
    sys.exit(status)


def _parse(argv):
    try:
        return absl_flags.FLAGS(argv)
    except absl_flags.Error as exc:
        # absl prefixes some messages (a missing --flagfile) with "ERROR::".
        _fail(str(exc).splitlines()[0].removeprefix("ERROR::").strip())


def main(argv) -> None:
    logging.set_verbosity(logging.WARNING)  # TF's SavedModel writer logs every step at INFO
    if len(argv) > 1:
        _fail(f"unexpected argument(s) {' '.join(argv[1:])}; every setting is a --flag (see --help)")
    from frep_tf.config import ConfigError
    from frep_tf.validation import validate

    try:
        cfg = flags.config_from_flags(absl_flags.FLAGS)
        if cfg.run.mode == "evaluate" and not absl_flags.FLAGS["workdir"].present:
            # The default workdir is training's: an evaluation without --workdir writes nothing.
            cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, workdir=""))
        cfg = validate(cfg)
    except ConfigError as exc:
        _fail(str(exc))
    if cfg.run.mode in ("experiment", "report"):
        _experiment(cfg)
        return
    if cfg.run.mode == "cost":
        _cost(cfg)
        return
    from frep_tf.data import DatasetError
    from frep_tf.model_io import ModelFileError
    from frep_tf.run import current_stage, run

    try:
        run(cfg)
    except (ConfigError, DatasetError, ModelFileError) as exc:
        _fail(str(exc))
    except Exception as exc:
        # These live in modules that import TensorFlow, and are only raised once the run has.
        from frep_tf.export import ExportError
        from frep_tf.training.checkpoint import CheckpointError
        from frep_tf.training.guards import NonFiniteLossError
        from frep_tf.training.pruning import PruningError

        if isinstance(exc, CheckpointError):
            _fail(str(exc))
        if isinstance(exc, (NonFiniteLossError, ExportError, PruningError)):
            _fail(str(exc), EXIT_RUN_FAILED)
        _fail_unexpected(exc, cfg.run.workdir, current_stage())


def _fail_unexpected(exc: Exception, workdir: str, stage: str) -> None:
    """Anything not anticipated (disk full, out of memory, a TensorFlow error): one line naming the stage
    and the cause, the traceback in <workdir>/error.log, exit 3. Nothing is deleted: the newest
    checkpoint stays where the next run resumes from."""
    import tempfile
    import traceback

    from frep_tf.workdir import ERROR_LOG

    text = "".join(traceback.format_exception(exc))
    log = None
    for directory in ([workdir] if workdir else []) + [tempfile.gettempdir()]:
        try:
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, ERROR_LOG)
            with open(path, "w") as f:
                f.write(f"stage: {stage}\n{text}")
            log = path
            break
        except OSError:  # e.g. the disk that is full
            continue
    # TensorFlow's op errors start with "Graph execution error:" and an indented trace of the node.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith((" ", "\t"))]
    generic = ("Graph execution error", "Detected at node")
    cause = next((line for line in lines if not line.startswith(generic)), lines[0] if lines else "")
    cause = f"{type(exc).__name__}: {cause}" if cause else type(exc).__name__
    if len(cause) > 300:
        cause = cause[:297] + "..."
    where = f"full traceback in {log}" if log else "the traceback could not be written"
    kept = ""
    if workdir:
        from frep_tf.training import checkpoint
        from frep_tf.workdir import checkpoint_dir

        newest = checkpoint.latest(checkpoint_dir(workdir))
        if newest:
            kept = f"; the last good checkpoint, {newest}, is kept (the same command resumes)"
    _fail(f"the {stage} stage failed: {cause} ({where}){kept}", EXIT_RUN_FAILED)


def _experiment(cfg) -> None:
    """--mode=experiment runs a grid of cells (each an ordinary run of this file); --mode=report writes its report."""
    from frep_tf.experiments import runner
    from frep_tf.experiments.report import ReportError
    from frep_tf.experiments.spec import ExperimentError

    try:
        if cfg.run.mode == "report":
            path = runner.write_report(cfg.run.workdir, experiment_path=cfg.run.experiment or None)
            print(f"[experiment] report: {path}", flush=True)
            return
        status = runner.run(
            cfg.run.experiment,
            cfg.run.workdir,
            shard=cfg.run.experiment_shard,
            extra_args=_forwarded(),
            results_dir=cfg.run.experiment_results or None,
            parse_args=flags.parse_args,
        )
    except (ExperimentError, ReportError) as exc:
        _fail(str(exc))
    except Exception as exc:  # one line and error.log, as for a run
        _fail_unexpected(exc, cfg.run.workdir, cfg.run.mode)
    if status:
        sys.exit(status)


def _forwarded() -> list[str]:
    """Flags given on this command line (e.g. --data_dir) that go to every cell, after the file's base flags."""
    from frep_tf.experiments.spec import RESERVED

    return [
        absl_flags.FLAGS[name].serialize()
        for name in _CONFIG_FLAGS
        if absl_flags.FLAGS[name].present and name not in RESERVED
    ]


def _cost(cfg) -> None:
    """--mode=cost: every row of the experiment timed side by side in this process; <workdir>/cost.json."""
    from frep_tf.config import ConfigError
    from frep_tf.data import DatasetError
    from frep_tf.experiments import cost
    from frep_tf.experiments.spec import ExperimentError

    try:
        cost.run(
            cfg.run.experiment,
            cfg.run.workdir,
            parse_args=flags.parse_args,
            steps=cfg.run.cost_steps,
            rounds=cfg.run.cost_rounds,
            extra_args=_forwarded(),
        )
    except (ExperimentError, ConfigError, DatasetError) as exc:
        _fail(str(exc))
    except Exception as exc:  # the traceback goes to the temporary directory: the workdir gets cost.json only
        _fail_unexpected(exc, "", "cost")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
