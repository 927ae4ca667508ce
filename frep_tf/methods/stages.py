"""A method is a sequence of stages, each one `fit` (or one pass) with its own epochs and optimizer.

    frep / lwm / posthoc   train (--epochs; frep and lwm prune at --prune_epoch inside it)
    admm                   pretrain -> admm -> retrain      (100 + 100 + 100, Table V's 300)
    hydra                  pretrain -> score -> finetune    (100 + 20 + 100, Table V's 220)
    mad                    pretrain -> saliency -> finetune (100 + 1 + 139, Table V's 240)

MAD's 240: its saliency pass goes over the training set once (one epoch of data, far more than one
epoch of compute: PGD plus `--mad_mask_steps` Adam steps on the soft mask per batch), so Table V's
240 = 100 pre-training + 1 saliency pass + 139 fine-tuning epochs.

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

import dataclasses
import os
import resource
import time

import numpy as np

from frep_tf.config import BASELINES, Config

DEFAULT_FINETUNE_EPOCHS = {"admm": 100, "hydra": 100, "mad": 139}
IWI_SOURCE_DIR = "source"


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    start: int  # first global epoch
    epochs: int
    kind: str = "fit"  # fit | saliency (MAD's one pass, no optimizer steps)
    step: str = "standard"  # RobustModel.step_mode
    lr: float = 0.1
    schedule: str = "step"  # step (x0.1 at 70 % / 85 %) | cosine
    objective: str = "pgd"
    trades_beta: float = 6.0
    prune: bool = False  # frep / lwm: GlobalPruning at --prune_epoch inside this stage
    ensemble: bool = False  # the temporal ensemble runs in this stage (the last one)

    @property
    def end(self) -> int:
        return self.start + self.epochs


def plan(cfg: Config) -> list[Stage]:
    """The stages of `cfg.method.method` with their (scaled) epochs; stages of 0 epochs are left out."""
    from frep_tf.config import scaled_epochs

    m, t = cfg.method, cfg.train
    method = m.method
    ensemble = cfg.ensemble.ensemble
    if method == "lottery":
        return _lottery_plan(cfg)
    if method not in BASELINES or method in ("lwm", "iwi"):
        prune = method in ("frep", "lwm") and cfg.prune.sparsity > 0
        stage = Stage("train", 0, cfg.epochs, lr=t.lr, objective=t.objective, trades_beta=t.trades_beta, prune=prune)
        return [dataclasses.replace(stage, ensemble=ensemble)]
    scale = m.epoch_scale
    finetune = scaled_epochs(m.finetune_epochs or DEFAULT_FINETUNE_EPOCHS[method], scale)
    common = {"objective": t.objective, "trades_beta": t.trades_beta}
    specs = [dict(name="pretrain", epochs=scaled_epochs(m.pretrain_epochs, scale), lr=t.lr, **common)]
    if method == "admm":
        specs.append(
            dict(
                name="admm",
                epochs=scaled_epochs(m.admm_epochs, scale),
                step="admm",
                lr=m.finetune_lr,
                schedule="cosine",
            )
        )
        specs.append(dict(name="retrain", epochs=finetune, lr=m.finetune_lr, schedule="cosine"))
    elif method == "hydra":
        specs.append(
            dict(name="score", epochs=scaled_epochs(m.score_epochs, scale), step="score", lr=t.lr, schedule="cosine")
        )
        specs.append(dict(name="finetune", epochs=finetune, lr=m.finetune_lr, schedule="cosine"))
    else:  # mad
        specs.append(dict(name="saliency", epochs=1, kind="saliency"))
        specs.append(
            dict(
                name="finetune",
                epochs=finetune,
                lr=m.finetune_lr,
                schedule="cosine",
                objective="mart",
                trades_beta=m.mad_beta,
            )
        )
    stages, start = [], 0
    for spec in specs:
        spec = {**common, **spec}
        if spec["epochs"] <= 0:
            continue
        stages.append(Stage(start=start, **spec))
        start += spec["epochs"]
    stages[-1] = dataclasses.replace(stages[-1], ensemble=ensemble)
    return stages


def _lottery_plan(cfg: Config) -> list[Stage]:
    """dense, then round1..n (prune, rewind, train), each --epochs long: --epochs is the main training
    stage of every method, and a ticket's retraining is as long as the dense training it came from."""
    m, t = cfg.method, cfg.train
    common = {"lr": t.lr, "objective": t.objective, "trades_beta": t.trades_beta}
    dense = per_round = cfg.epochs
    stages = [Stage("dense", 0, dense, **common)] if dense else []
    start = dense
    for k in range(1, m.lottery_rounds + 1):
        stages.append(Stage(f"round{k}", start, per_round, **common))
        start += per_round
    stages[-1] = dataclasses.replace(stages[-1], ensemble=cfg.ensemble.ensemble)
    return stages


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


def admm_interval(cfg: Config) -> int:
    """Epochs between ADMM updates, scaled with the stages (--epoch_scale), so a shrunk ADMM stage
    still makes the same number of updates (the original: every 20 of 200 epochs, 10 updates)."""
    from frep_tf.config import scaled_epochs

    return scaled_epochs(cfg.method.admm_interval, cfg.method.epoch_scale)


def method_state(cfg: Config, network):
    """The baseline's own state layers, as RobustModel keyword arguments (empty for frep/lwm/posthoc)."""
    from frep_tf.layers.reparam import reparam_layers
    from frep_tf.methods import admm, hydra, mad

    layers = reparam_layers(network)
    m, sparsity = cfg.method, cfg.prune.sparsity
    if m.method == "admm":
        return {
            "admm_state": admm.ADMMState.for_layers(
                admm.admm_layers(layers), sparsity, rho=m.admm_rho, admm_epoch=admm_interval(cfg), name="admm_state"
            )
        }
    if m.method == "hydra":
        scores = hydra.HydraScores.for_layers(layers, sparsity, name="hydra_scores")
        scores.trainable = False  # trained only in the score stage
        return {"hydra_scores": scores}
    if m.method == "lottery":
        from frep_tf.methods.lottery import LotteryState

        return {"lottery_state": LotteryState.for_network(network, name="lottery_state")}
    if m.method == "mad":
        return {
            "saliency": mad.SaliencyAverage(
                [tuple(layer.mask.shape) for layer in layers],
                layer_names=[layer.name for layer in layers],
                name="saliency",
            )
        }
    return {}


# -- per stage -------------------------------------------------------------------------------------
def configure(stage: Stage, model) -> None:
    """What a stage trains and how (idempotent; run before its optimizer is built, fresh or resumed)."""
    from frep_tf.methods import hydra

    model.objective = stage.objective
    model.trades_beta = float(stage.trades_beta)
    model.step_mode = stage.step
    if model.hydra_scores is not None:
        if stage.step == "score":
            hydra.freeze_weights(model.reparam)
            model.hydra_scores.trainable = True
        else:
            hydra.unfreeze_weights(model.reparam)
            model.hydra_scores.trainable = False


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
    from frep_tf.methods import admm, mad
    from frep_tf.methods import masks as masks_lib
    from frep_tf.training.pruning import check_layer_densities, layer_densities

    sparsity = cfg.prune.sparsity
    found = None
    if stage.name == "retrain":  # ADMM: hard pruning by |W|, per conv layer
        admm.hard_prune(model.admm_layers, sparsity)
        found = model.admm_layers
    elif stage.name == "score":
        model.hydra_scores.initialize(masks_lib.kernels(model.reparam))
    elif stage.name == "finetune" and model.hydra_scores is not None:
        model.hydra_scores.fixed_masks(model.reparam)
        found = model.reparam
    elif stage.name == "finetune" and model.saliency is not None:
        masks = mad.saliency_masks(model.saliency.mean(), sparsity, min_density=cfg.prune.min_layer_density)
        check_layer_densities(
            layer_densities([layer.name for layer in model.reparam], masks), sparsity, cfg.prune.min_layer_density
        )
        masks_lib.apply_masks(model.reparam, masks)
        found = model.reparam
    elif model.lottery_state is not None and stage.name == "dense":
        if cfg.method.rewind_epoch == 0:
            model.lottery_state.take(model.network)  # the ticket inherits the initialisation
    elif model.lottery_state is not None and stage.name.startswith("round"):
        from frep_tf.methods import lottery

        k = int(stage.name.removeprefix("round"))
        target = lottery.round_sparsities(sparsity, cfg.method.lottery_rounds)[k - 1]
        masks = lottery.prune_round(model.reparam, target, cfg.prune.min_layer_density)  # ranked on trained weights
        if not bool(model.lottery_state.taken.numpy()):
            raise RuntimeError("the lottery ticket's rewind copy was never taken")
        model.lottery_state.rewind(model.network)  # weight inheritance
        if cfg.method.lottery_reinit:
            lottery.reinit_kernels(model.reparam, seed=cfg.run.seed + 7919 * k)  # the control
        masks_lib.apply_masks(model.reparam, masks)
        found = model.reparam
    elif cfg.method.method == "iwi" and stage.start == 0:
        import keras

        from frep_tf.methods import lottery

        source = keras.models.load_model(iwi_source_path(cfg), compile=False)
        lottery.inherit(model.network, source, fill=cfg.method.iwi_fill, tiny=cfg.method.iwi_tiny, seed=cfg.run.seed)
        if model.ensemble is not None:
            copy_fused_weights(model.network, model.ensemble)
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


def iwi_source_path(cfg: Config) -> str:
    """The small network IWI inherits from: --iwi_from, or stage 1's export in <workdir>/source/."""
    return cfg.method.iwi_from or os.path.join(cfg.run.workdir, IWI_SOURCE_DIR, "export", "model.keras")


def iwi_source_config(cfg: Config) -> Config:
    """Stage 1 of IWI: an ordinary run of --iwi_source in <workdir>/source/ (its own resumable workdir),
    with every other setting of this run (narrow mapping: at --iwi_source_width), exporting model.keras."""
    run = dataclasses.replace(cfg.run, workdir=os.path.join(cfg.run.workdir, IWI_SOURCE_DIR), export="keras")
    method = dataclasses.replace(cfg.method, method=cfg.method.iwi_source)
    model = cfg.model
    if cfg.method.iwi_mapping == "narrow":
        model = dataclasses.replace(model, width=cfg.method.iwi_source_width)
    return dataclasses.replace(cfg, run=run, method=method, model=model)


def saliency_pass(stage: Stage, model, splits, steps_per_epoch: int, cfg: Config, verbose: int) -> None:
    """MAD's saliency: per training batch, PGD examples (BatchNorm in inference mode), the soft mask
    optimised on them, then the second-order saliency, averaged over the batches (frep_tf.methods.mad)."""
    import keras
    import tensorflow as tf

    from frep_tf.attacks.pgd import pgd
    from frep_tf.methods import mad

    avg = model.saliency
    for total in avg.sums:
        total.assign(tf.zeros_like(total))
    avg.batches.assign(0)
    batches = cfg.method.mad_batches or steps_per_epoch
    pass_ = mad.SaliencyPass(
        model.network, model.reparam, steps=cfg.method.mad_mask_steps, learning_rate=cfg.method.mad_mask_lr
    )
    t = cfg.train
    bar = keras.utils.Progbar(batches, verbose=1 if verbose == 1 else 0, unit_name="batch")
    network_fn = lambda x: model.network(x, training=False)  # noqa: E731
    for i, (x, y) in enumerate(splits.train_from(stage.start).take(batches)):
        x_adv = pgd(
            network_fn,
            x,
            y,
            eps=t.epsilon,
            steps=t.pgd_steps,
            step_size=t.pgd_step_size,
            seed=cfg.run.seed * 100003 + i,
        )
        avg.add(pass_.batch(x_adv, y))
        bar.update(i + 1)
    if verbose == 2:
        print(f"saliency: {int(avg.batches.numpy())} batches", flush=True)


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
    base = os.path.join(workdir, "tb")
    return base if len(stages) == 1 else os.path.join(base, stage.name)


def make_callbacks(
    cfg: Config, model, stage: Stage, stages: list[Stage], splits, decay_steps, workdir, clock, steps_per_epoch
):
    """The callbacks of one `fit` stage. The checkpoint callback is last: it stores the epoch once
    every other callback is done with it (and the stage clock's record with it)."""
    import keras

    from frep_tf import kill_points, resume
    from frep_tf.data.splits import dataset_arrays
    from frep_tf.methods import admm
    from frep_tf.training.checkpoint import EpochCheckpoint
    from frep_tf.training.ensemble import TemporalEnsemble
    from frep_tf.training.guards import StopOnNonFiniteLoss
    from frep_tf.training.monitor import EpochMonitor
    from frep_tf.training.pruning import GlobalPruning, make_schedule

    callbacks = [StopOnNonFiniteLoss()]
    ensemble_cb = None
    if stage.ensemble and model.ensemble is not None:
        e = cfg.ensemble
        ensemble_cb = TemporalEnsemble(
            decay=e.ensemble_decay,
            warmup=e.ensemble_warmup,
            interval=e.ensemble_interval,
            decay_steps=decay_steps,
            count_from=e.ensemble_interval_from,
            final_update=e.ensemble_final_update,
        )
        callbacks.append(ensemble_cb)
    p = cfg.prune
    if stage.prune:
        begin_step = cfg.prune_epoch * steps_per_epoch
        schedule = make_schedule(
            p.prune_schedule, p.sparsity, begin_step, cfg.prune_end_epoch * steps_per_epoch, steps_per_epoch
        )
        restart = cfg.ensemble.ensemble_restart and p.prune_schedule == "oneshot"
        callbacks.append(
            GlobalPruning(
                schedule,
                structured=p.structured,
                restart_ensemble=restart,
                min_layer_density=p.min_layer_density,
                log_dir=os.path.join(workdir, "tb", "frep"),
            )
        )
        if kill_points.enabled():
            callbacks.append(_after_prune_kill_point())
    if stage.step == "admm":
        callbacks.append(admm.ADMMUpdates(model.admm_state, model.admm_layers, first_epoch=stage.start))
    if model.lottery_state is not None and stage.name == "dense" and cfg.method.rewind_epoch > 0:
        from frep_tf.methods.lottery import RewindAt

        callbacks.append(RewindAt(model.lottery_state, model.network, cfg.method.rewind_epoch))
    x_val, y_val = dataset_arrays(splits.val, cfg.eval.val_samples)
    callbacks.append(
        EpochMonitor(
            x_val,
            y_val,
            epsilon=cfg.train.epsilon,
            pgd_steps=cfg.eval.val_pgd_steps,
            log_dir=os.path.join(workdir, "tb", "frep"),
            ensemble_callback=ensemble_cb,
            batch_size=cfg.data.eval_batch_size,
            seed=cfg.run.seed,
        )
    )
    callbacks.append(
        keras.callbacks.TensorBoard(log_dir=tb_dir(workdir, stage, stages), update_freq="epoch", write_graph=False)
    )
    callbacks.append(clock_callback(clock))
    callbacks.append(
        EpochCheckpoint(os.path.join(workdir, resume.CHECKPOINT_DIR), extra=lambda: {"stages": clock.snapshot()})
    )
    return callbacks


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


def posthoc_prune(final, sparsity: float, min_density: float = 0.0) -> dict:
    """--method=posthoc (paper Fig. 8): one global magnitude prune of the trained model's fused
    kernels, no fine-tuning. Returns the per-layer densities (refused like FReP's prune)."""
    from frep_tf.training.pruning import check_layer_densities, global_unstructured_masks, layer_densities

    layers = [layer for layer in final.layers if _is_prunable_standard(layer)]
    kernels = [np.asarray(layer.kernel) for layer in layers]
    masks = global_unstructured_masks(kernels, sparsity, min_density)
    densities = layer_densities([layer.name for layer in layers], masks)
    check_layer_densities(densities, sparsity, min_density)
    for layer, kernel, mask in zip(layers, kernels, masks, strict=True):
        layer.kernel.assign(kernel * mask)
    return densities


def _is_prunable_standard(layer) -> bool:
    import keras

    return isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and not isinstance(
        layer, keras.layers.DepthwiseConv2D
    )
