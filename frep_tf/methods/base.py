"""What a method is: its stages, the state it keeps in the model, what each stage does when it begins,
the callbacks it adds, and the hooks it gives RobustModel's train step. Every method is a subclass of
`Method` in its own module, registered in frep_tf.methods.registry; the stage machinery
(frep_tf.methods.stages) and the pipeline only call these hooks, so adding a method edits no
dispatcher.

A stage is one `fit` (or one pass, `kind != "fit"`) with its own epochs, learning-rate schedule,
trainable set and objective. Epochs are numbered globally: stage k covers [start_k, end_k).
"""

from __future__ import annotations

import dataclasses

from frep_tf.config import Config, scaled_epochs


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    start: int  # first global epoch
    epochs: int
    kind: str = "fit"  # fit | saliency (MAD's one pass, no optimizer steps)
    step: str = "standard"  # which train-step hook the method gives this stage (Method.step_hook)
    lr: float = 0.1
    schedule: str = "step"  # step (x0.1 at 70 % / 85 %) | cosine
    objective: str = "pgd"
    trades_beta: float = 6.0
    prune: bool = False  # frep / lwm: GlobalPruning at --prune_epoch inside this stage
    ensemble: bool = False  # the temporal ensemble runs in this stage (the last one)

    @property
    def end(self) -> int:
        return self.start + self.epochs


def sequence(cfg: Config, specs: list[dict]) -> list[Stage]:
    """Stages from specs (name, epochs, and any Stage field), one after the other; a stage of 0 epochs is
    left out, and the temporal ensemble (if on) runs in the last."""
    common = {"objective": cfg.train.objective, "trades_beta": cfg.train.trades_beta}
    stages, start = [], 0
    for spec in specs:
        spec = {**common, **spec}
        if spec["epochs"] <= 0:
            continue
        stages.append(Stage(start=start, **spec))
        start += spec["epochs"]
    stages[-1] = dataclasses.replace(stages[-1], ensemble=cfg.ensemble.ensemble)
    return stages


def pretrain_then(
    cfg: Config, middle: dict, own_finetune_epochs: int, last: str = "finetune", **last_spec
) -> list[Stage]:
    """The staged baselines' shape: pretrain (--pretrain_epochs, --lr with the paper's decay), the method's
    own middle stage, then `last` (--finetune_epochs, 0 = the method's own count; --finetune_lr, cosine)."""
    m = cfg.method
    finetune = staged_epochs(cfg, m.finetune_epochs or own_finetune_epochs)
    return sequence(
        cfg,
        [
            dict(name="pretrain", epochs=staged_epochs(cfg, m.pretrain_epochs), lr=cfg.train.lr),
            middle,
            dict(name=last, epochs=finetune, lr=m.finetune_lr, schedule="cosine", **last_spec),
        ],
    )


class StepHook:
    """How a method changes one train step (traced inside RobustModel.train_step). The default changes
    nothing; a hook overrides what it needs."""

    def before(self, model) -> None:
        """Before the forward pass (e.g. HYDRA writes its top-k masks)."""

    def trainable(self, model, variables: list) -> list:
        """The variables the optimizer updates from the loss's own gradients."""
        return variables

    def watched(self, model) -> list:
        """Extra tensors the tape watches; their gradients go to `routed`."""
        return []

    def penalty(self, model):
        """A term added to the loss (per replica, before the replica scaling of the step), or None."""
        return None

    def routed(self, model, watched_grads: list) -> tuple[list, list]:
        """(gradients, variables) made from the watched tensors' gradients (HYDRA's scores)."""
        return [], []


class Method:
    """A training method. The defaults are FReP's: one `train` stage of --epochs, pruning inside it
    at --prune_epoch, no state, no hook."""

    name = ""
    prunes_in_training = True  # GlobalPruning at --prune_epoch inside the single train stage
    prunes_after_training = False  # `after_training` prunes the final model (post-hoc)

    def plan(self, cfg: Config) -> list[Stage]:
        t = cfg.train
        prune = self.prunes_in_training and cfg.prune.sparsity > 0
        return sequence(cfg, [dict(name="train", epochs=cfg.epochs, lr=t.lr, prune=prune)])

    def state(self, cfg: Config, network) -> dict:
        """Keras layers holding the method's own variables, attached to the model from the start so
        every stage has the same variables and a checkpoint of any stage restores into the model."""
        return {}

    def configure(self, stage: Stage, model) -> None:
        """What the stage trains (idempotent; before its optimizer is built, fresh or resumed)."""

    def step_hook(self, stage: Stage, model) -> StepHook | None:
        return None

    def begin(self, stage: Stage, model, cfg: Config) -> list | None:
        """What the stage does to the model when it starts fresh (never on resume); returns the layers
        whose masks it set, if it pruned."""
        return None

    def callbacks(self, stage: Stage, model, cfg: Config) -> list:
        """Callbacks of the method's own, for this stage's `fit`."""
        return []

    def run_pass(self, stage: Stage, model, splits, steps_per_epoch: int, cfg: Config, verbose: int) -> None:
        """A stage that is not a `fit` (kind != "fit")."""
        raise NotImplementedError(f"--method={self.name} has no {stage.kind} stage")

    def pass_batches(self, stage: Stage, cfg: Config, steps_per_epoch: int) -> int:
        """Training batches a pass stage goes over (one epoch of them by default)."""
        return steps_per_epoch

    def pass_step(self, stage: Stage, model, cfg: Config):
        """A pass stage's work on one batch, set up once: a function (batch index, x, y) -> None that
        `run_pass` calls on every batch of the pass (and --mode=cost times)."""
        raise NotImplementedError(f"--method={self.name} has no {stage.kind} stage")

    def own_runs(self, cfg: Config) -> list[Config]:
        """The ordinary runs `before_training` makes (IWI: its source), each in its own workdir. The
        experiment runner may fill one with a finished cell that is the same run (frep_tf.experiments.share)."""
        return []

    def before_training(self, cfg: Config, run) -> dict | None:
        """Work before this run trains (IWI trains its source with `run(cfg)`); its results, or None."""
        return None

    def after_training(self, final, cfg: Config) -> dict | None:
        """Per-layer densities if the method prunes the final model itself (post-hoc), else None."""
        return None


def staged_epochs(cfg: Config, epochs: int) -> int:
    """A stage flag's epochs after --epoch_scale."""
    return scaled_epochs(epochs, cfg.method.epoch_scale)
