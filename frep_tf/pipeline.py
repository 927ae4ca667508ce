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
import dataclasses
import os
import sys
import tempfile
import time

import numpy as np

from frep_tf import kill_points, resume
from frep_tf.config import Config, ConfigError
from frep_tf.data.splits import dataset_arrays
from frep_tf.final_evaluation import evaluate_classifier, evaluate_deployed, input_gradient_l1, transfer_pgd
from frep_tf.io_utils import fsync_dir, remove, write_json_atomic
from frep_tf.results import RESULTS_SCHEMA_VERSION, attack_results, info_dict, summary_table
from frep_tf.validation import validate

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


@dataclasses.dataclass
class _Training:
    """A training run's state between its phases (build, train, export, evaluate, results)."""

    cfg: Config
    method: object
    timer: Stages
    source: dict | None = None
    strategy: object = None
    chief: bool = True
    out_dir: str = ""
    splits: object = None
    steps_per_epoch: int = 0
    plan: list = dataclasses.field(default_factory=list)
    model: object = None
    current: int = 0
    decay_steps: tuple = ()
    epoch: int = 0
    last_logs: dict = dataclasses.field(default_factory=dict)
    clock: object = None
    restored: object = None

    @property
    def workdir(self) -> str:
        return self.cfg.run.workdir

    @property
    def total_epochs(self) -> int:
        from frep_tf.methods import stages as stages_lib

        return stages_lib.total_epochs(self.plan)


def run_train(cfg: Config) -> dict:
    """Build, train every stage of the method, export, evaluate, write results.json (chief only)."""
    from frep_tf.methods import stages as stages_lib

    method = stages_lib.method_of(cfg)
    source = method.before_training(cfg, run)  # IWI's stage 1: its small sparse network, a run of its own
    if source is not None:
        _enter_stage("start")
    t = _Training(cfg, method, Stages(), source)
    _build(t)
    with t.timer("train"):
        _train_stages(t)
    if not t.chief:
        remove(t.out_dir)
        resolver = t.strategy.cluster_resolver
        print(
            f"[frep_tf] {resolver.task_type} {resolver.task_id}: training done; the chief exports, evaluates "
            f"and writes {t.workdir}",
            flush=True,
        )
        return {"training": {"epochs": t.total_epochs, "final_epoch": t.last_logs}}
    return _finish(t)


def _build(t: _Training) -> None:
    """Set up TensorFlow, load the data, build the model for the stage a checkpoint is in, restore it."""
    from frep_tf.methods import stages as stages_lib

    cfg = t.cfg
    with t.timer("setup"):
        t.strategy = _setup_tf(cfg)
        # Multi-worker: only the chief writes the run's outputs; every other worker writes its
        # checkpoints and TensorBoard logs into a temporary directory, deleted once training ends.
        t.chief = is_chief(t.strategy)
        t.out_dir = t.workdir if t.chief else tempfile.mkdtemp(prefix="frep_tf-worker-")
        if not t.chief:
            atexit.register(remove, t.out_dir)  # also when training fails
    with t.timer("data"):
        t.splits = load_data(cfg)
        info = t.splits.info
        t.steps_per_epoch = info.num_train // cfg.data.batch_size
        if t.steps_per_epoch < 1:
            raise ConfigError(
                f"--batch_size={cfg.data.batch_size}: larger than the {info.num_train} training examples of "
                f"{info.name}; use a smaller batch"
            )
    t.plan = stages_lib.plan(cfg)
    print(f"[frep_tf] {stages_lib.describe(cfg, t.plan)}", flush=True)  # what will train, before it costs hours
    with t.timer("build"), t.strategy.scope():
        t.model = build_robust_model(cfg, info)
        # The checkpoint's epoch says which stage wrote it: that stage's trainable variables and
        # optimizer are set up before it is restored (frep_tf.methods.stages).
        t.current = 0 if cfg.run.overwrite else stages_lib.locate(t.plan, _checkpoint_epoch(t.workdir))
        stages_lib.configure(t.plan[t.current], t.model, cfg)
        t.decay_steps = stages_lib.compile_stage(t.plan[t.current], t.model, t.steps_per_epoch, cfg)
        t.restored = None if cfg.run.overwrite else _restore(t.model, t.workdir)
    # Every check has passed: from here on the workdir is written.
    if t.chief:
        resume.prepare(cfg)
    t.epoch = t.restored.epoch if t.restored else 0
    t.last_logs = t.restored.logs if t.restored else {}
    t.clock = stages_lib.StageClock((t.restored.extra.get("stages") if t.restored else None) or {})


def _train_stages(t: _Training) -> None:
    """Every stage not yet done, from the checkpoint's; a failure keeps the last good checkpoint."""
    from frep_tf.training import checkpoint
    from frep_tf.training.guards import NonFiniteLossError
    from frep_tf.training.pruning import PruningError

    if t.restored:
        print(
            f"[frep_tf] resuming from {os.path.relpath(t.restored.path, t.workdir)}: "
            f"{t.epoch} of {t.total_epochs} epochs done ({t.plan[t.current].name} stage)",
            flush=True,
        )
    try:
        for index in range(t.current, len(t.plan)):
            if t.epoch < t.plan[index].end:
                _train_stage(t, index)
    except (NonFiniteLossError, PruningError) as exc:
        kept = checkpoint.latest(os.path.join(t.workdir, resume.CHECKPOINT_DIR))
        where = (
            f"the last good checkpoint, {kept}, is kept" if kept else "no epoch had finished, so there is no checkpoint"
        )
        hint = "Try a lower --lr" if isinstance(exc, NonFiniteLossError) else "Run again"
        raise type(exc)(f"{exc}; {where}. {hint} (with --overwrite or another --workdir)") from None


def _train_stage(t: _Training, index: int) -> None:
    from frep_tf.methods import stages as stages_lib
    from frep_tf.training import checkpoint
    from frep_tf.training.checkpoint import EpochCheckpoint

    cfg, stage, model = t.cfg, t.plan[index], t.model
    with t.strategy.scope():
        if index != t.current:
            stages_lib.configure(stage, model, cfg)
            t.decay_steps = stages_lib.compile_stage(stage, model, t.steps_per_epoch, cfg)
            t.current = index
        if t.epoch == stage.start:
            stages_lib.begin(stage, model, cfg)
        if len(t.plan) > 1:
            print(f"[frep_tf] stage {stage.name}: epochs {t.epoch + 1}-{stage.end} of {t.total_epochs}", flush=True)
        t.clock.start(stage.name)
        if stage.kind != "fit":  # a pass over the data, no optimizer steps (MAD's saliency)
            t.method.run_pass(stage, model, t.splits, t.steps_per_epoch, cfg, _verbose(cfg))
            t.clock.lap()
            directory = os.path.join(t.out_dir, resume.CHECKPOINT_DIR)
            saved = checkpoint.save(model, directory, stage.end, {}, {"stages": t.clock.snapshot()})
            checkpoint.prune_others(directory, keep=saved)
            t.epoch = stage.end
            return
        callbacks = stages_lib.make_callbacks(
            cfg, model, stage, t.plan, t.splits, t.decay_steps, t.out_dir, t.clock, t.steps_per_epoch
        )
    model.fit(
        t.splits.train_from(t.epoch),
        epochs=stage.end,
        initial_epoch=t.epoch,
        steps_per_epoch=t.steps_per_epoch,
        validation_data=t.splits.val,
        callbacks=callbacks,
        shuffle=False,  # the data pipeline shuffles, as a function of (seed, epoch)
        verbose=_verbose(cfg),
    )
    t.epoch = stage.end
    t.last_logs = next(cb for cb in callbacks if isinstance(cb, EpochCheckpoint)).last_logs


def _finish(t: _Training) -> dict:
    """The chief: the final model (the ensemble, or the fused network), exported and evaluated; results.json."""
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
    _enter_stage("results")
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
        source=_source_summary(cfg, t.source) if cfg.method.method == "iwi" else None,
        **outputs,
    )
    write_json_atomic(os.path.join(t.workdir, resume.RESULTS_FILE), results)
    kill_points.kill_point("results")
    # The run is finished (results.json is what says so): its training state is no longer needed.
    remove(os.path.join(t.workdir, resume.CHECKPOINT_DIR))
    print(summary_table(results))
    return results


def _export_and_evaluate(t: _Training, final) -> dict:
    """Every requested export, then the evaluation of the exported model reloaded from disk (and of
    every TFLite file on the interpreter)."""
    from frep_tf import export as export_lib
    from frep_tf.model_io import load_classifier

    cfg, splits, info = t.cfg, t.splits, t.splits.info
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
        evaluated = None
        for fmt in ("keras", "saved_model"):
            if fmt in cfg.export_formats:
                evaluated = os.path.join(t.workdir, resume.EXPORT_DIR, export_lib.FILENAMES[fmt])
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
    return {
        "records": records,
        "compact_report": compact_report,
        "representative": representative,
        "evaluated": evaluated,
        "evaluation": evaluation,
        "tflite_evaluation": tflite_evaluation,
    }


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
