"""One `python main.py` run: data -> build -> train (prune, ensemble) -> fuse/export -> evaluate.

    cfg = validate(Config(...)); results = run(cfg)

Outputs under `cfg.run.workdir` (the names are frep_tf.workdir's): config.json (resolved), checkpoint/ (the
newest epoch, while the run is unfinished), tb/ (TensorBoard), export/ (the fused ensemble in every
requested format), results.json (schema in docs/outputs.md). The library never reads absl flags; main.py
turns them into a Config.

Runs survive kills (docs/outputs.md): the same command on the same workdir resumes from the newest
checkpoint, or prints the stored results of a finished run (frep_tf.resume). Nothing is written to
the workdir until data and model are built and the checkpoint (if any) is restored, so bad input
never leaves anything behind; every file is written atomically (temporary name, then rename).

One concern per module: `setup` (TensorFlow, the data, the model), `train` (every stage of the method,
resumable), `finish` (the export, the exported model's evaluation, results.json), `evaluate` (the final
evaluation protocol, and --mode=evaluate), `predict` (--mode=predict), `timing` (wall time per stage, and
the stage running for main.py's error line). Importing the package imports no TensorFlow.
"""

from __future__ import annotations

from frep_tf import resume
from frep_tf.config import Config
from frep_tf.results import RESULTS_SCHEMA_VERSION, summary_table
from frep_tf.run.evaluate import run_evaluate
from frep_tf.run.predict import run_predict
from frep_tf.run.timing import current_stage
from frep_tf.run.train import run_train
from frep_tf.validation import validate

__all__ = ["current_stage", "run"]


def run(cfg: Config) -> dict:
    """The run `cfg` asks for (--mode train, evaluate or predict); its results (as results.json holds them)."""
    from frep_tf import data

    validate(cfg)
    if cfg.run.mode == "predict":  # needs neither a workdir nor a dataset
        return run_predict(cfg)
    # Read-only: refuses a workdir made with other settings, and finds a finished run.
    state = resume.inspect(cfg, schema_version=RESULTS_SCHEMA_VERSION)
    if state.finished:
        resume.tidy_finished(cfg.run.workdir)
        print(
            f"[frep_tf] {cfg.run.workdir} holds a finished run with these settings: its stored results "
            "(--overwrite starts afresh)",
            flush=True,
        )
        print(summary_table(state.results))
        return state.results
    if cfg.run.mode == "evaluate":
        from frep_tf.model_io import check_model_path

        check_model_path(cfg.eval.model, flag="model")
        if cfg.eval.transfer_from:
            check_model_path(cfg.eval.transfer_from, flag="transfer_from")
    # Missing data is found before TensorFlow starts (seconds, not tfds's minutes of retries).
    data.check_available(
        cfg.data.dataset, data_dir=cfg.data.data_dir or None, download=cfg.data.download, svhn_extra=cfg.data.svhn_extra
    )
    if cfg.run.mode == "evaluate":
        return run_evaluate(cfg)
    return run_train(cfg, run)
