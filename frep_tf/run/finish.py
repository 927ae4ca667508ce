"""The end of a training run (the chief): the final model (the temporal ensemble, or the fused network)
exported atomically, the exported file reloaded and evaluated, results.json written."""

from __future__ import annotations

import os

import numpy as np

from frep_tf import kill_points
from frep_tf.data.splits import dataset_arrays
from frep_tf.io_utils import fsync_dir, remove, write_json_atomic
from frep_tf.results import summary_table
from frep_tf.run.evaluate import evaluate_classifier, evaluate_deployed, input_gradient_l1
from frep_tf.run.timing import enter_stage
from frep_tf.workdir import EXPORT_DIR, EXPORT_PREVIOUS, EXPORT_STAGING, checkpoint_dir, results_path

INT8_CALIBRATION_IMAGES = 256  # training images the int8 exports are calibrated on


def finish(t, source_summary: dict | None = None) -> dict:
    """The final model of the trained run `t` (frep_tf.run.train.Training), exported and evaluated;
    results.json. `source_summary`: what IWI inherited from (None for every other method)."""
    from frep_tf.fuse import fuse
    from frep_tf.results import train_results
    from frep_tf.training.pruning import layer_densities

    cfg, model = t.cfg, t.model
    final = model.ensemble if model.ensemble is not None else fuse(model.network)
    if t.method.prunes_after_training:
        with t.timer("prune"):  # paper Fig. 8: once, after the last epoch, no fine-tuning
            masks = t.method.after_training(final, cfg)
    else:
        masks = layer_densities(
            [layer.name for layer in model.reparam], [np.asarray(layer.mask) for layer in model.reparam]
        )
    outputs = _export_and_evaluate(t, final)
    enter_stage("results")
    results = train_results(
        cfg,
        t.splits.info,
        model,
        final,
        masks=masks,
        plan=t.plan,
        clock=t.clock,
        steps_per_epoch=t.steps_per_epoch,
        last_logs=t.last_logs,
        timings=t.timer.seconds | {"total": t.timer.total()},
        source=source_summary,
        **outputs,
    )
    write_json_atomic(results_path(t.workdir), results)
    kill_points.kill_point("results")
    # The run is finished (results.json is what says so): its training state is no longer needed.
    remove(checkpoint_dir(t.workdir))
    print(summary_table(results))
    return results


def _export_and_evaluate(t, final) -> dict:
    """Every requested export, then the evaluation of the exported model reloaded from disk (and of
    every TFLite file on the interpreter)."""
    cfg, splits = t.cfg, t.splits
    x_test, y_test = dataset_arrays(splits.test)
    records, compact_report, representative = [], {}, None
    with t.timer("export"):
        if cfg.export_formats:
            if any(f in cfg.export_formats for f in ("tflite_int8", "tflite_int8_dense", "compact")):
                # int8 calibration images come from the training split, never the test split.
                representative, _ = dataset_arrays(splits.train, INT8_CALIBRATION_IMAGES)
            records = export_atomically(
                final, t.workdir, cfg.export_formats, x_test[:64], representative=representative, report=compact_report
            )
    with t.timer("evaluate"):
        evaluated, evaluation, tflite_evaluation = _evaluate_final(t, final, records, x_test, y_test)
    return {
        "records": records,
        "compact_report": compact_report,
        "representative": representative,
        "evaluated": evaluated,
        "evaluation": evaluation,
        "tflite_evaluation": tflite_evaluation,
    }


def _evaluate_final(t, final, records, x_test, y_test):
    """(path of the evaluated export or None, its evaluation, the TFLite files' evaluation or None): the
    Keras or SavedModel export reloaded from disk if there is one, else the final model in memory."""
    from frep_tf import export as export_lib
    from frep_tf.model_io import load_classifier

    cfg, info = t.cfg, t.splits.info
    evaluated = None
    for fmt in ("keras", "saved_model"):
        if fmt in cfg.export_formats:
            evaluated = os.path.join(t.workdir, EXPORT_DIR, export_lib.FILENAMES[fmt])
            break
    if evaluated is not None:
        model_fn = load_classifier(evaluated, input_shape=info.image_shape, num_classes=info.num_classes)
    else:
        model_fn = lambda x: final(x, training=False)  # noqa: E731
    evaluation = evaluate_classifier(model_fn, x_test, y_test, cfg)
    evaluation["input_gradient_l1"] = input_gradient_l1(
        model_fn, x_test, y_test, cfg.data.eval_batch_size, cfg.eval.eval_samples or 1000
    )
    tflite_evaluation = None
    tflite_files = {r.format: r.path for r in records if r.format in export_lib.TFLITE_FORMATS}
    if cfg.eval.eval_tflite and tflite_files:
        tflite_evaluation = evaluate_deployed(tflite_files, model_fn, x_test, y_test, cfg, info.num_classes)
    return evaluated, evaluation, tflite_evaluation


def export_atomically(model, workdir: str, formats, check_inputs, *, representative=None, report=None) -> list:
    """Export into a staging directory, then swap it in as export/: export/ is the complete set of a
    run's exports or absent, never a mix of two attempts (a resumed run exports again)."""
    import dataclasses

    from frep_tf import export as export_lib

    staging = os.path.join(workdir, EXPORT_STAGING)
    previous = os.path.join(workdir, EXPORT_PREVIOUS)
    final = os.path.join(workdir, EXPORT_DIR)
    remove(staging)
    records = export_lib.export_model(
        model, staging, formats=formats, check_inputs=check_inputs, representative=representative, compact_report=report
    )
    fsync_dir(staging)
    kill_points.kill_point("export")
    remove(previous)
    if os.path.exists(final):
        os.replace(final, previous)
    os.replace(staging, final)
    fsync_dir(workdir)
    remove(previous)
    return [dataclasses.replace(r, path=os.path.join(final, os.path.relpath(r.path, staging))) for r in records]
