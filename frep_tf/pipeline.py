"""The stages `python main.py` runs: data -> build -> train (prune, ensemble) -> fuse/export -> evaluate.

    cfg = validate(Config(...)); results = run(cfg)

Outputs under `cfg.run.workdir`: config.json (resolved), checkpoint/ (the newest epoch, while the run
is unfinished), tb/ (TensorBoard), export/ (the fused ensemble in every requested format),
results.json (schema in docs/outputs.md). The library never reads absl flags; main.py turns them into a
Config.

Runs survive kills (docs/outputs.md): the same command on the same workdir resumes from the newest
checkpoint, or prints the stored results of a finished run (frep_tf.resume). Nothing is written to
the workdir until data and model are built and the checkpoint (if any) is restored, so bad input
never leaves anything behind; every file is written atomically (temporary name, then rename).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import tempfile
import time

import numpy as np

from frep_tf import kill_points, resume
from frep_tf.config import Config, ConfigError, validate
from frep_tf.data.splits import dataset_arrays
from frep_tf.final_evaluation import evaluate_classifier, evaluate_deployed, input_gradient_l1, transfer_pgd
from frep_tf.io_utils import fsync_dir, remove, write_json_atomic
from frep_tf.results import attack_results, compact_summary, info_dict, method_summary, summary_table

RESULTS_SCHEMA_VERSION = 2  # 2: evaluation_tflite per exported TFLite file; compact; int8_calibration (+ method)
INT8_CALIBRATION_IMAGES = 256  # training images the int8 exports are calibrated on


_current_stage = "start"


def current_stage() -> str:
    """The stage running (or that was running when something failed): for main.py's error line."""
    return _current_stage


def _enter_stage(name: str) -> None:
    global _current_stage
    _current_stage = name


class Stages:
    """Wall time per stage, printed as the stages start."""

    def __init__(self, quiet: bool = False):
        self.seconds: dict[str, float] = {}
        self.quiet = quiet
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        if not self.quiet:
            print(f"[frep_tf] {name} ...", flush=True)
        _enter_stage(name)
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - t, 3)

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 3)


def _setup_tf(cfg: Config):
    import keras
    import tensorflow as tf

    # MultiWorkerMirroredStrategy must exist before other TensorFlow work (it reads TF_CONFIG).
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if cfg.run.distribution == "multi_worker" else None
    keras.utils.set_random_seed(cfg.run.seed)
    if cfg.run.deterministic:
        tf.config.experimental.enable_op_determinism()
    if cfg.run.distribution == "mirrored":
        return tf.distribute.MirroredStrategy()
    return strategy or tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """The worker that writes the run's outputs: task `chief`, else worker 0; True without a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster:
        return True
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def load_data(cfg: Config):
    from frep_tf import data

    d = cfg.data
    return data.load_dataset(
        d.dataset,
        data_dir=d.data_dir or None,
        batch_size=d.batch_size,
        eval_batch_size=d.eval_batch_size,
        val_size=int(d.val_size) if d.val_size >= 1 else d.val_size,
        seed=cfg.run.seed,
        augment=d.augment,
        image_size=d.image_size or None,
        svhn_extra=d.svhn_extra,
        deterministic=cfg.run.deterministic,
        download=d.download,
        train_samples=d.train_samples,
    )


def build_robust_model(cfg: Config, info):
    """The network in its RobustModel, with the method's own state attached (not compiled: every
    stage compiles it with its own optimizer, frep_tf.methods.stages)."""
    from frep_tf.methods import stages as stages_lib
    from frep_tf.models import build_model
    from frep_tf.training.robust_model import RobustModel

    m, t = cfg.model, cfg.train
    try:
        network = build_model(
            m.arch,
            num_classes=info.num_classes,
            input_shape=info.image_shape,
            parameterization=m.parameterization,
            factor_init=m.factor_init,
            width=m.width,
        )
    except ValueError as exc:  # e.g. vgg16's five poolings on 8x8 digits
        shape = "x".join(map(str, info.image_shape))
        raise ConfigError(
            f"--arch={m.arch}: cannot be built for the {shape} images of {info.name} ({_keras_reason(exc)}); "
            "choose an architecture for smaller images (small_cnn) or resize them (--image_size)"
        ) from exc
    if cfg.method.sparse_init:
        from frep_tf.layers.reparam import reparam_layers
        from frep_tf.methods import sparse_init

        sparse_init.apply(reparam_layers(network), seed=cfg.run.seed)
    from frep_tf.layers.reparam import reparam_layers

    return RobustModel(
        network,
        objective=t.objective,
        epsilon=t.epsilon,
        step_size=cfg.step_size,
        sre_lambda=t.sre_lambda,
        pgd_steps=t.pgd_steps,
        pgd_step_size=t.pgd_step_size,
        trades_beta=t.trades_beta,
        attack_bn=t.attack_bn,
        weight_decay=t.weight_decay,
        ensemble=cfg.ensemble.ensemble,
        seed=cfg.run.seed,
        method_state=stages_lib.method_of(cfg).state(cfg, network),
    )


def build_and_compile(cfg: Config, info, steps_per_epoch: int):
    """The model ready for its method's first stage (optimizer built): (model, lr decay steps)."""
    from frep_tf.methods import stages as stages_lib

    model = build_robust_model(cfg, info)
    first = stages_lib.plan(cfg)[0]
    stages_lib.configure(first, model, cfg)
    return model, stages_lib.compile_stage(first, model, steps_per_epoch, cfg)


def _keras_reason(exc: Exception, limit: int = 160) -> str:
    """The gist of a Keras layer error on one line: no colour codes, no call-site boilerplate."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    text = text.split("Arguments received by", 1)[0]
    layer = re.search(r"Exception encountered when calling (\w+)", text)
    text = re.sub(r"Exception encountered when calling [\w.]+\(\)\.", "", text)
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{layer.group(1)}: {text}" if layer else text


def _verbose(cfg: Config) -> int:
    if cfg.run.verbose >= 0:
        return cfg.run.verbose
    return 1 if sys.stdout.isatty() else 2


def run(cfg: Config) -> dict:
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
    return run_train(cfg)


def _restore(model, workdir: str):
    """The newest checkpoint, restored into `model`; None if there is none. Raises CheckpointError."""
    from frep_tf.training import checkpoint

    path = checkpoint.latest(os.path.join(workdir, resume.CHECKPOINT_DIR))
    if path is None:
        return None
    try:
        return checkpoint.restore(model, path)
    except checkpoint.CheckpointError as exc:
        raise checkpoint.CheckpointError(
            f"--workdir={workdir}: {resume.CHECKPOINT_DIR}/{exc}; delete {resume.CHECKPOINT_DIR}/ to retrain "
            "from the start, or use --overwrite"
        ) from None


def _source_summary(cfg: Config, source: dict | None) -> dict:
    """What IWI inherited from: the exported small network and, when stage 1 ran here, its results."""
    from frep_tf.methods import iwi

    out = {"path": iwi.source_path(cfg), "mapping": cfg.method.iwi_mapping, "fill": cfg.method.iwi_fill}
    if source:
        out |= {
            "method": cfg.method.iwi_source,
            "sparsity": source.get("sparsity"),
            "accuracy": {k: v["accuracy"] for k, v in attack_results(source.get("evaluation") or {}).items()},
            "seconds": (source.get("method") or {}).get("seconds"),
        }
    return out


def _checkpoint_epoch(workdir: str) -> int:
    """Epochs done by the newest checkpoint (0 if none; a damaged one is reported by `_restore`)."""
    from frep_tf.training import checkpoint

    path = checkpoint.latest(os.path.join(workdir, resume.CHECKPOINT_DIR))
    if path is None:
        return 0
    try:
        return int(checkpoint.read_state(path)["epoch"])
    except checkpoint.CheckpointError:
        return 0


def run_train(cfg: Config) -> dict:
    from frep_tf import export as export_lib
    from frep_tf.fuse import fuse
    from frep_tf.methods import stages as stages_lib
    from frep_tf.model_io import load_classifier
    from frep_tf.training import checkpoint
    from frep_tf.training.checkpoint import EpochCheckpoint
    from frep_tf.training.guards import NonFiniteLossError
    from frep_tf.training.pruning import PruningError, kernel_sparsity, layer_densities
    from frep_tf.weight_stats import sparsity_measures, weight_histogram

    workdir = cfg.run.workdir
    checkpoint_dir = os.path.join(workdir, resume.CHECKPOINT_DIR)
    method = stages_lib.method_of(cfg)
    source = method.before_training(cfg, run)  # IWI's stage 1: its small sparse network, a run of its own
    if source is not None:
        _enter_stage("start")
    stages = Stages()
    with stages("setup"):
        strategy = _setup_tf(cfg)
        # Multi-worker: only the chief writes the run's outputs; every other worker writes its
        # checkpoints and TensorBoard logs into a temporary directory, deleted once training ends.
        chief = is_chief(strategy)
        out_dir = workdir if chief else tempfile.mkdtemp(prefix="frep_tf-worker-")
        if not chief:
            atexit.register(remove, out_dir)  # also when training fails
    with stages("data"):
        splits = load_data(cfg)
        info = splits.info
        steps_per_epoch = info.num_train // cfg.data.batch_size
        if steps_per_epoch < 1:
            raise ConfigError(
                f"--batch_size={cfg.data.batch_size}: larger than the {info.num_train} training examples of "
                f"{info.name}; use a smaller batch"
            )
    plan = stages_lib.plan(cfg)
    total_epochs = stages_lib.total_epochs(plan)
    print(f"[frep_tf] {stages_lib.describe(cfg, plan)}", flush=True)  # what will train, before it costs hours
    with stages("build"), strategy.scope():
        model = build_robust_model(cfg, info)
        # The checkpoint's epoch says which stage wrote it: that stage's trainable variables and
        # optimizer are set up before it is restored (frep_tf.methods.stages).
        current = 0 if cfg.run.overwrite else stages_lib.locate(plan, _checkpoint_epoch(workdir))
        stages_lib.configure(plan[current], model, cfg)
        decay_steps = stages_lib.compile_stage(plan[current], model, steps_per_epoch, cfg)
        restored = None if cfg.run.overwrite else _restore(model, workdir)
    # Every check has passed: from here on the workdir is written.
    if chief:
        resume.prepare(cfg)
    epoch = restored.epoch if restored else 0
    last_logs = restored.logs if restored else {}
    clock = stages_lib.StageClock((restored.extra.get("stages") if restored else None) or {})
    with stages("train"):
        if restored:
            print(
                f"[frep_tf] resuming from {os.path.relpath(restored.path, workdir)}: "
                f"{epoch} of {total_epochs} epochs done ({plan[current].name} stage)",
                flush=True,
            )
        try:
            for index in range(current, len(plan)):
                stage = plan[index]
                if epoch >= stage.end:
                    continue
                with strategy.scope():
                    if index != current:
                        stages_lib.configure(stage, model, cfg)
                        decay_steps = stages_lib.compile_stage(stage, model, steps_per_epoch, cfg)
                        current = index
                    if epoch == stage.start:
                        stages_lib.begin(stage, model, cfg)
                    if len(plan) > 1:
                        print(
                            f"[frep_tf] stage {stage.name}: epochs {epoch + 1}-{stage.end} of {total_epochs}",
                            flush=True,
                        )
                    clock.start(stage.name)
                    if stage.kind != "fit":  # a pass over the data, no optimizer steps (MAD's saliency)
                        method.run_pass(stage, model, splits, steps_per_epoch, cfg, _verbose(cfg))
                        clock.lap()
                        saved = checkpoint.save(
                            model,
                            os.path.join(out_dir, resume.CHECKPOINT_DIR),
                            stage.end,
                            {},
                            {"stages": clock.snapshot()},
                        )
                        checkpoint.prune_others(os.path.join(out_dir, resume.CHECKPOINT_DIR), keep=saved)
                        epoch = stage.end
                        continue
                    callbacks = stages_lib.make_callbacks(
                        cfg, model, stage, plan, splits, decay_steps, out_dir, clock, steps_per_epoch
                    )
                model.fit(
                    splits.train_from(epoch),
                    epochs=stage.end,
                    initial_epoch=epoch,
                    steps_per_epoch=steps_per_epoch,
                    validation_data=splits.val,
                    callbacks=callbacks,
                    shuffle=False,  # the data pipeline shuffles, as a function of (seed, epoch)
                    verbose=_verbose(cfg),
                )
                epoch = stage.end
                last_logs = next(cb for cb in callbacks if isinstance(cb, EpochCheckpoint)).last_logs
        except (NonFiniteLossError, PruningError) as exc:
            kept = checkpoint.latest(checkpoint_dir)
            where = (
                f"the last good checkpoint, {kept}, is kept"
                if kept
                else "no epoch had finished, so there is no checkpoint"
            )
            hint = "Try a lower --lr" if isinstance(exc, NonFiniteLossError) else "Run again"
            raise type(exc)(f"{exc}; {where}. {hint} (with --overwrite or another --workdir)") from None
    if not chief:
        remove(out_dir)
        resolver = strategy.cluster_resolver
        print(
            f"[frep_tf] {resolver.task_type} {resolver.task_id}: training done; the chief exports, evaluates "
            f"and writes {workdir}",
            flush=True,
        )
        return {"training": {"epochs": total_epochs, "final_epoch": last_logs}}
    final = model.ensemble if model.ensemble is not None else fuse(model.network)
    if method.prunes_after_training:
        with stages("prune"):  # paper Fig. 8: once, after the last epoch, no fine-tuning
            masks = method.after_training(final, cfg)
    else:
        masks = layer_densities(
            [layer.name for layer in model.reparam], [np.asarray(layer.mask) for layer in model.reparam]
        )
    x_test, y_test = dataset_arrays(splits.test)
    export_dir = os.path.join(workdir, resume.EXPORT_DIR)
    records, compact_report, representative = [], {}, None
    with stages("export"):
        if cfg.export_formats:
            if any(f in cfg.export_formats for f in ("tflite_int8", "tflite_int8_dense", "compact")):
                # int8 calibration images come from the training split, never the test split.
                representative, _ = dataset_arrays(splits.train, INT8_CALIBRATION_IMAGES)
            records = export_atomically(
                final, workdir, cfg.export_formats, x_test[:64], representative=representative, report=compact_report
            )
    with stages("evaluate"):
        # Robust accuracy is measured on the exported model, reloaded from disk.
        evaluated = None
        for fmt in ("keras", "saved_model"):
            if fmt in cfg.export_formats:
                evaluated = os.path.join(export_dir, export_lib.FILENAMES[fmt])
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
    _enter_stage("results")
    sparsity = kernel_sparsity(final)
    trainable_training = int(sum(np.prod(v.shape) for v in model.network.trainable_weights))
    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "mode": "train",
        "dataset": info_dict(info),
        "model": {
            "arch": cfg.model.arch,
            "parameterization": cfg.model.parameterization,
            # Which weights `final` (the exported model) holds: read off that object, not the configuration.
            "evaluated": "ensemble" if final is model.ensemble else "network",
            "evaluated_path": os.path.relpath(evaluated, workdir) if evaluated else None,
        },
        "params": {
            "training_trainable": trainable_training,
            "deployed": sparsity["all_params"],
            "deployed_kernels": sparsity["kernel_params"],
            "deployed_nonzero": sparsity["nonzero_params"],
        },
        "sparsity": {"kernels": sparsity["kernels"], "all_parameters": sparsity["all_parameters"]},
        "weight_histogram": weight_histogram(final),  # paper Fig. 7, for reports
        "sparsity_measures": sparsity_measures(final),
        # What each prunable layer keeps of its weights (its mask; the training network's layer names).
        "pruning": {"layers": masks},
        "evaluation": evaluation,
        "evaluation_tflite": tflite_evaluation,
        "exports": [
            {
                "format": r.format,
                "path": os.path.relpath(r.path, workdir),
                "bytes": r.bytes,
                "max_abs_diff": r.max_abs_diff,
                "seconds": round(r.seconds, 3),
            }
            | ({"int8_top1_agreement": r.agreement} if r.agreement is not None else {})
            for r in records
        ],
        "int8_calibration": (
            None if representative is None else {"split": "train", "images": int(len(representative))}
        ),
        "compact": compact_summary(compact_report, records) if compact_report else None,
        "method": method_summary(cfg, plan, clock)
        | ({"source": _source_summary(cfg, source)} if cfg.method.method == "iwi" else {}),
        "training": {
            "epochs": total_epochs,
            "steps": sum(st.epochs * steps_per_epoch for st in plan if st.kind == "fit"),
            "steps_per_epoch": steps_per_epoch,
            "ensemble_updates": int(model.ensemble_updates.numpy()),
            # The last epoch's logs, as its checkpoint recorded them: the same whether that epoch
            # ran in this process or before a kill.
            "final_epoch": last_logs,
        },
        "timings": stages.seconds | {"total": stages.total()},
    }
    write_json_atomic(os.path.join(workdir, resume.RESULTS_FILE), results)
    kill_points.kill_point("results")
    # The run is finished (results.json is what says so): its training state is no longer needed.
    remove(checkpoint_dir)
    print(summary_table(results))
    return results


def export_atomically(model, workdir: str, formats, check_inputs, *, representative=None, report=None) -> list:
    """Export into a staging directory, then swap it in as export/: export/ is the complete set of a
    run's exports or absent, never a mix of two attempts (a resumed run exports again)."""
    import dataclasses

    from frep_tf import export as export_lib

    staging = os.path.join(workdir, resume.EXPORT_STAGING)
    previous = os.path.join(workdir, resume.EXPORT_PREVIOUS)
    final = os.path.join(workdir, resume.EXPORT_DIR)
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


def run_evaluate(cfg: Config) -> dict:
    from frep_tf.model_io import load_classifier

    stages = Stages()
    with stages("setup"):
        _setup_tf(cfg)
    with stages("data"):
        splits = load_data(cfg)
        info = splits.info
        x_test, y_test = dataset_arrays(splits.test)
    with stages("load"):
        model_fn = load_classifier(cfg.eval.model, input_shape=info.image_shape, num_classes=info.num_classes)
        source = None
        if cfg.eval.transfer_from:
            source = load_classifier(
                cfg.eval.transfer_from, input_shape=info.image_shape, num_classes=info.num_classes, flag="transfer_from"
            )
    with stages("evaluate"):
        evaluation = evaluate_classifier(model_fn, x_test, y_test, cfg)
        if source is not None:
            n = cfg.eval.eval_samples or None
            evaluation["transfer_pgd"] = transfer_pgd(source, {"model": model_fn}, x_test[:n], y_test[:n], cfg)["model"]
    _enter_stage("results")
    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "mode": "evaluate",
        "dataset": info_dict(info),
        "model": {"evaluated_path": os.path.abspath(cfg.eval.model)},
        "evaluation": evaluation,
        "timings": stages.seconds | {"total": stages.total()},
    }
    if cfg.run.workdir:
        # Nothing is written before the evaluation is done: a bad model file leaves no trace.
        resume.prepare(cfg)
        write_json_atomic(os.path.join(cfg.run.workdir, resume.RESULTS_FILE), results)
    print(summary_table(results))
    return results


def run_predict(cfg: Config) -> dict:
    """Classify --images with --model (any exported format); print the CSV or write it to --predictions."""
    from frep_tf import predict

    rows = predict.predict(cfg.eval.model, cfg.eval.images, batch_size=cfg.data.eval_batch_size)
    text = predict.to_csv(rows)
    if cfg.eval.predictions:
        tmp = cfg.eval.predictions + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, cfg.eval.predictions)
        print(f"[frep_tf] {len(rows)} predictions written to {cfg.eval.predictions}", flush=True)
    else:
        print(text, end="", flush=True)
    return {"mode": "predict", "predictions": [{"image": n, "class": c, "probability": p} for n, c, p in rows]}
