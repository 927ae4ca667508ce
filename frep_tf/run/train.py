"""`--mode=train`: build, train every stage of the method (resuming from the newest checkpoint), then
hand the trained model to frep_tf.run.finish (export, evaluation, results.json)."""

from __future__ import annotations

import atexit
import dataclasses
import os
import tempfile

from frep_tf import resume
from frep_tf.config import Config, ConfigError
from frep_tf.io_utils import remove
from frep_tf.results import attack_results
from frep_tf.run import finish
from frep_tf.run.setup import build_robust_model, is_chief, load_data, setup_tf, verbose
from frep_tf.run.timing import Stages, enter_stage
from frep_tf.workdir import CHECKPOINT_DIR, checkpoint_dir


@dataclasses.dataclass
class Training:
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


def run_train(cfg: Config, run) -> dict:
    """Build, train every stage of the method, export, evaluate, write results.json (chief only). `run`
    is frep_tf.run.run, for a method whose first stage is a run of its own (IWI's small sparse network)."""
    from frep_tf.methods import stages as stages_lib

    method = stages_lib.method_of(cfg)
    source = method.before_training(cfg, run)  # IWI's stage 1: its small sparse network, a run of its own
    if source is not None:
        enter_stage("start")
    t = Training(cfg, method, Stages(), source)
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
    return finish.finish(t, _source_summary(cfg, t.source) if cfg.method.method == "iwi" else None)


def _build(t: Training) -> None:
    """Set up TensorFlow, load the data, build the model for the stage a checkpoint is in, restore it."""
    from frep_tf.methods import stages as stages_lib

    cfg = t.cfg
    with t.timer("setup"):
        t.strategy = setup_tf(cfg)
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


def _train_stages(t: Training) -> None:
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
        kept = checkpoint.latest(checkpoint_dir(t.workdir))
        where = (
            f"the last good checkpoint, {kept}, is kept" if kept else "no epoch had finished, so there is no checkpoint"
        )
        hint = "Try a lower --lr" if isinstance(exc, NonFiniteLossError) else "Run again"
        raise type(exc)(f"{exc}; {where}. {hint} (with --overwrite or another --workdir)") from None


def _train_stage(t: Training, index: int) -> None:
    from frep_tf.methods import stages as stages_lib
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
            _run_pass(t, stage)
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
        verbose=verbose(cfg),
    )
    t.epoch = stage.end
    t.last_logs = next(cb for cb in callbacks if isinstance(cb, EpochCheckpoint)).last_logs


def _run_pass(t: Training, stage) -> None:
    """A stage that is a pass over the data, then a checkpoint at its end."""
    from frep_tf.training import checkpoint

    t.method.run_pass(stage, t.model, t.splits, t.steps_per_epoch, t.cfg, verbose(t.cfg))
    t.clock.lap()
    directory = checkpoint_dir(t.out_dir)
    saved = checkpoint.save(t.model, directory, stage.end, {}, {"stages": t.clock.snapshot()})
    checkpoint.prune_others(directory, keep=saved)
    t.epoch = stage.end


def _restore(model, workdir: str):
    """The newest checkpoint, restored into `model`; None if there is none. Raises CheckpointError."""
    from frep_tf.training import checkpoint

    path = checkpoint.latest(checkpoint_dir(workdir))
    if path is None:
        return None
    try:
        return checkpoint.restore(model, path)
    except checkpoint.CheckpointError as exc:
        raise checkpoint.CheckpointError(
            f"--workdir={workdir}: {CHECKPOINT_DIR}/{exc}; delete {CHECKPOINT_DIR}/ to retrain "
            "from the start, or use --overwrite"
        ) from None


def _checkpoint_epoch(workdir: str) -> int:
    """Epochs done by the newest checkpoint (0 if none; a damaged one is reported by `_restore`)."""
    from frep_tf.training import checkpoint

    path = checkpoint.latest(checkpoint_dir(workdir))
    if path is None:
        return 0
    try:
        return int(checkpoint.read_state(path)["epoch"])
    except checkpoint.CheckpointError:
        return 0


def _source_summary(cfg: Config, source: dict | None) -> dict:
    """What IWI inherited from: the exported small network and, when stage 1 ran here, its results."""
    from frep_tf.methods import iwi

    out = {"path": iwi.source_path(cfg), "mapping": cfg.method.iwi_mapping, "fill": cfg.method.iwi_fill}
    if not cfg.method.iwi_from and (cell := resume.shared_from(iwi.source_config(cfg).run.workdir)):
        out["shared_from"] = cell  # stage 1 was a finished experiment cell, copied in by the runner
    if source:
        out |= {
            "method": cfg.method.iwi_source,
            "sparsity": source.get("sparsity"),
            "accuracy": {k: v["accuracy"] for k, v in attack_results(source.get("evaluation") or {}).items()},
            "seconds": (source.get("method") or {}).get("seconds"),
        }
    return out
