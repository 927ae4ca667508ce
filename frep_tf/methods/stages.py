"""The stage machinery every method shares: a method (frep_tf.methods.base.Method, one module each,
registered in frep_tf.methods.registry) lists its stages; this module plans, configures, compiles and
begins them, and builds each `fit`'s callbacks.

    frep / lwm / posthoc   train (--epochs; frep and lwm prune at --prune_epoch inside it)
    admm                   pretrain -> admm -> retrain      (100 + 100 + 100, Table V's 300)
    hydra                  pretrain -> score -> finetune    (100 + 20 + 100, Table V's 220)
    harp                   pretrain -> prune -> finetune    (100 + 20 + 100)
    mad                    pretrain -> saliency -> finetune (100 + 1 + 139, Table V's 240)
    lottery                dense -> round1 .. roundN        (--epochs each)
    iwi                    [its source method's run] -> train (--epochs)

Epochs are numbered globally: stage k covers epochs [start_k, end_k), `fit` runs with
initial_epoch/epochs in that numbering, so checkpoints (`epoch-NNNNN`), the data order and the
TensorBoard x axis continue across stages, and the stage of a checkpoint follows from its epoch.
Every stage builds a fresh SGD optimizer (momentum 0.9) over the variables it trains; a checkpoint
written in stage k is restored into stage k's optimizer. What a stage does to the variables when it
begins (a hard prune, score initialisation, the saliency pass) happens only when it begins fresh,
never when it is resumed, so a kill anywhere ends as the uninterrupted run does.

Learning rates: `pretrain` and `train` use --lr with the paper's decay (x0.1 at 70 % and 85 % of the
stage); HYDRA's score learning uses --lr with cosine decay (the original: 0.1, cosine); the stages
that train weights after pre-training (`admm`, `retrain`, `finetune`) use --finetune_lr (0.01) with
cosine decay, as the HYDRA and MAD originals fine-tune.
"""

from __future__ import annotations

import os
import resource
import time

import numpy as np

from frep_tf.config import Config
from frep_tf.methods import registry
from frep_tf.methods.base import Method, Stage
from frep_tf.workdir import CHECKPOINT_DIR, TENSORBOARD_DIR, VALIDATION_LOG_DIR

__all__ = [
    "Stage",
    "plan",
    "method_of",
    "configure",
    "begin",
    "make_callbacks",
    "training_callbacks",
    "compile_stage",
    "describe",
]


def method_of(cfg: Config) -> Method:
    return registry.get(cfg.method.method)


def plan(cfg: Config) -> list[Stage]:
    """The stages of `cfg.method.method` with their (scaled) epochs; stages of 0 epochs are left out."""
    return method_of(cfg).plan(cfg)


def describe(cfg: Config, stages: list[Stage]) -> str:
    """One line saying what a run will actually train: the method, its layers, objective and ensemble,
    and each stage's epochs (printed when training starts, so a surprise shows before it costs hours)."""
    parts = " + ".join(f"{s.name} {s.epochs}" for s in stages)
    objectives = sorted({s.objective for s in stages if s.kind == "fit"})
    ensemble = "temporal ensemble" if cfg.ensemble.ensemble else "no ensemble"
    sparsity = f"{cfg.prune.sparsity:.4g} sparse" + (" (channels)" if cfg.prune.structured else "")
    return (
        f"--method={cfg.method.method}: {cfg.model.parameterization} layers, objective {'/'.join(objectives)}, "
        f"{ensemble}, {sparsity}; epochs {parts} = {total_epochs(stages)}"
    )


def total_epochs(stages: list[Stage]) -> int:
    return stages[-1].end


def locate(stages: list[Stage], epochs_done: int) -> int:
    """Index of the stage a checkpoint after `epochs_done` epochs was written in (0 if none)."""
    for i, stage in enumerate(stages):
        if stage.start < epochs_done <= stage.end:
            return i
    return 0


# -- per stage -------------------------------------------------------------------------------------
def configure(stage: Stage, model, cfg: Config) -> None:
    """What a stage trains and how (idempotent; run before its optimizer is built, fresh or resumed)."""
    method = method_of(cfg)
    model.objective = stage.objective
    model.trades_beta = float(stage.trades_beta)
    method.configure(stage, model)
    model.step_hook = method.step_hook(stage, model)


def compile_stage(stage: Stage, model, steps_per_epoch: int, cfg: Config) -> tuple:
    """A fresh optimizer over the stage's trainable variables, built (so a checkpoint can fill it).
    Returns the optimizer steps at which the learning rate decays (the ensemble interval grows there)."""
    import keras

    steps = max(stage.epochs * steps_per_epoch, 1)
    decay_steps = ()
    if stage.schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(stage.lr, decay_steps=steps)
    else:
        decay_steps = lr_decay_steps(stage.epochs, steps_per_epoch)
        # PiecewiseConstantDecay keeps a value up to and including its boundary, and the step taken when
        # `iterations` == decay_steps[0] is the first one of the decay epoch: it must already use lr / 10.
        boundaries = [b - 1 for b in decay_steps]
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [stage.lr, stage.lr / 10, stage.lr / 100]
        )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=schedule, momentum=cfg.train.momentum),
        jit_compile=cfg.run.jit_compile,
    )
    model.optimizer.build(model.trainable_variables)
    return decay_steps


def lr_decay_steps(epochs: int, steps_per_epoch: int) -> tuple[int, int]:
    """The learning rate is divided by 10 at 70 % and 85 % of the epochs (paper: epochs 70 and 85)."""
    return (round(0.7 * epochs) * steps_per_epoch, round(0.85 * epochs) * steps_per_epoch)


def begin(stage: Stage, model, cfg: Config) -> dict | None:
    """What a stage does to the model when it starts fresh (never on resume). Returns the masks'
    per-layer densities when the stage prunes."""
    from frep_tf.fuse import copy_fused_weights
    from frep_tf.training.pruning import layer_densities

    found = method_of(cfg).begin(stage, model, cfg)
    if found is not None:
        model.pruned.assign(True)  # from now on the train step keeps pruned weights at zero
    if stage.ensemble and model.ensemble is not None and stage.start > 0:
        # The ensemble of a multi-stage method averages its last stage only: it starts from the
        # network as that stage begins (pruned, for the fine-tuning stages).
        copy_fused_weights(model.network, model.ensemble)
        model.ensemble_updates.assign(0)
    if found is None:
        return None
    return layer_densities([layer.name for layer in found], [np.asarray(layer.mask) for layer in found])


# -- bookkeeping: wall time and memory per stage, carried by the checkpoints --------------------------
def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MiB; Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


class StageClock:
    """Seconds and peak memory per stage, summed over the processes that ran it (a resumed stage
    counts the epochs it finished before the kill plus the rest; a partial epoch that was redone is
    not counted twice). Its record travels in every checkpoint's state.json."""

    def __init__(self, record: dict | None = None):
        self.record: dict[str, dict] = {k: dict(v) for k, v in (record or {}).items()}
        self._start = None
        self._stage = None

    def start(self, stage: str) -> None:
        self._stage = stage
        self._start = time.perf_counter()
        self.record.setdefault(stage, {"seconds": 0.0, "peak_rss_mb": 0.0})

    def lap(self) -> dict:
        """Close the epoch that just ended (time since `start` or the last lap) and return the record."""
        now = time.perf_counter()
        entry = self.record[self._stage]
        entry["seconds"] = round(entry["seconds"] + now - self._start, 3)
        entry["peak_rss_mb"] = max(entry["peak_rss_mb"], peak_rss_mb())
        self._start = now
        return self.snapshot()

    def snapshot(self) -> dict:
        return {k: dict(v) for k, v in self.record.items()}


def clock_callback(clock: StageClock):
    import keras

    class Clock(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            clock.lap()

    return Clock()


def tb_dir(workdir: str, stage: Stage, stages: list[Stage]) -> str:
    """tb/ for a single-stage method (as before), tb/<stage>/ for each stage of a multi-stage one."""
    base = os.path.join(workdir, TENSORBOARD_DIR)
    return base if len(stages) == 1 else os.path.join(base, stage.name)


def make_callbacks(
    cfg: Config, model, stage: Stage, stages: list[Stage], splits, decay_steps, workdir, clock, steps_per_epoch
):
    """The callbacks of one `fit` stage: `training_callbacks`, then the monitoring and bookkeeping ones
    (validation, TensorBoard, the stage clock). The checkpoint callback is last: it stores the epoch once
    every other callback is done with it (and the stage clock's record with it)."""
    import keras

    from frep_tf import kill_points
    from frep_tf.data.splits import dataset_arrays
    from frep_tf.training.checkpoint import EpochCheckpoint
    from frep_tf.training.ensemble import TemporalEnsemble
    from frep_tf.training.monitor import EpochMonitor

    callbacks = training_callbacks(
        cfg, model, stage, decay_steps, steps_per_epoch, log_dir=os.path.join(workdir, VALIDATION_LOG_DIR)
    )
    ensemble_cb = next((c for c in callbacks if isinstance(c, TemporalEnsemble)), None)
    if stage.prune and kill_points.enabled():
        callbacks.append(_after_prune_kill_point())
    x_val, y_val = dataset_arrays(splits.val, cfg.eval.val_samples)
    callbacks.append(
        EpochMonitor(
            x_val,
            y_val,
            epsilon=cfg.train.epsilon,
            pgd_steps=cfg.eval.val_pgd_steps,
            log_dir=os.path.join(workdir, VALIDATION_LOG_DIR),
            ensemble_callback=ensemble_cb,
            batch_size=cfg.data.eval_batch_size,
            seed=cfg.run.seed,
        )
    )
    callbacks.append(
        keras.callbacks.TensorBoard(log_dir=tb_dir(workdir, stage, stages), update_freq="epoch", write_graph=False)
    )
    callbacks.append(clock_callback(clock))
    callbacks.append(EpochCheckpoint(os.path.join(workdir, CHECKPOINT_DIR), extra=lambda: {"stages": clock.snapshot()}))
    return callbacks


def training_callbacks(
    cfg: Config, model, stage: Stage, decay_steps, steps_per_epoch: int, log_dir: str | None = None
) -> list:
    """The callbacks of a `fit` stage that act on the training itself, in the order they run: the
    non-finite loss guard, the temporal ensemble and pruning (from the library's public function, as a
    user's `fit` gets them), then the method's own. `log_dir` receives pruning's per-layer kept fractions.
    --mode=cost times the steps of a stage with these (frep_tf.experiments.cost)."""
    from frep_tf.api.callbacks import callbacks as frep_callbacks
    from frep_tf.training.guards import StopOnNonFiniteLoss

    e, p = cfg.ensemble, cfg.prune
    shared = frep_callbacks(
        ensemble=bool(stage.ensemble and model.ensemble is not None),
        ensemble_decay=e.ensemble_decay,
        ensemble_warmup=e.ensemble_warmup,
        ensemble_interval=e.ensemble_interval,
        lr_decay_steps=tuple(decay_steps),
        ensemble_interval_from=e.ensemble_interval_from,
        ensemble_final_update=e.ensemble_final_update,
        ensemble_restart=e.ensemble_restart,
        sparsity=p.sparsity if stage.prune else None,
        prune_epoch=cfg.prune_epoch,
        schedule=p.prune_schedule,
        prune_end_epoch=cfg.prune_end_epoch if p.prune_schedule == "gradual" else None,
        steps_per_epoch=steps_per_epoch,
        structured=p.structured,
        min_layer_density=p.min_layer_density,
        log_dir=log_dir,
        log_sparsity=False,  # EpochMonitor logs it, with the rest
    )
    return [StopOnNonFiniteLoss(), *shared, *method_of(cfg).callbacks(stage, model, cfg)]


def _after_prune_kill_point():
    """Test hook (frep_tf.kill_points): the kill point right after the one-shot prune."""
    import keras

    from frep_tf import kill_points

    class AfterPrune(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self._pruned = bool(self.model.pruned.numpy())

        def on_train_batch_begin(self, batch, logs=None):  # runs after GlobalPruning's
            if not self._pruned and bool(self.model.pruned.numpy()):
                self._pruned = True
                kill_points.kill_point("pruned")

    return AfterPrune()
