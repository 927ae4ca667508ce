"""RobustModel: a keras.Model whose train_step does FReP's single-step adversarial training (Alg. 1).

`fit`, callbacks, metrics and tf.distribute work as for any Keras model. The model owns:
- `network`: the reparameterized network being trained;
- `ensemble`: the temporal ensemble (paper Eq. 13), held directly in fused form, i.e. a copy of the
  network made of standard layers, non-trainable. It is what gets evaluated and exported, and since
  it is a tracked sub-model, checkpoints carry it;
- counters (`ensemble_updates`, `pruned`) as variables, so they survive a checkpoint too.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from frep_tf import losses
from frep_tf.config import PERTURBATIONS
from frep_tf.fuse import copy_fused_weights, deploy_structure
from frep_tf.layers.reparam import reparam_layers
from frep_tf.structure import channel_graph
from frep_tf.training.pruning import structural_projection


def replicas_in_sync() -> int:
    """Replicas whose gradients the optimizer sums (1 outside tf.distribute)."""
    ctx = tf.distribute.get_replica_context()
    return ctx.num_replicas_in_sync if ctx is not None else 1


def replica_mean(per_example):
    """Mean over the global batch: local mean / replicas (gradients are summed across replicas)."""
    return tf.reduce_mean(per_example) / tf.cast(replicas_in_sync(), per_example.dtype)


def _per_worker_logs(logs: dict) -> dict:
    """Keras' fit reduces step outputs across workers with a mean over axis 0, which a scalar has not
    (MultiWorkerMirroredStrategy only): give each value that axis; the mean over workers is a scalar."""
    strategy = tf.distribute.get_strategy()
    multi_worker = (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()
    )
    return {k: tf.reshape(v, [1]) for k, v in logs.items()} if multi_worker else logs


def _project(x_adv, x, eps):
    return tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)


@keras.saving.register_keras_serializable(package="frep_tf")
class RobustModel(keras.Model):
    def __init__(
        self,
        network: keras.Model,
        *,
        objective: str = "sre",
        epsilon: float = 8 / 255,
        step_size: float | None = None,
        perturbation: str = "fgsm_rs",
        nfgsm_noise: float = 2.0,
        sre_lambda: float = 4.0,
        pgd_steps: int = 10,
        pgd_step_size: float = 2 / 255,
        trades_beta: float = 6.0,
        attack_bn: str = "train",
        weight_decay: float = 0.0,
        ensemble: bool = True,
        seed: int = 0,
        method_state: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.network = network
        self.objective = objective
        self.epsilon = float(epsilon)
        self.step_size = float(step_size or epsilon)
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"Unknown perturbation: {perturbation!r}. Allowed: {', '.join(PERTURBATIONS)}")
        # Only the single-step objectives (sre, fgsm) read it: pgd / trades / mart keep their PGD (so does
        # MAD's MART fine-tuning stage in a run whose --objective is fgsm).
        self.perturbation = perturbation
        self.nfgsm_noise = float(nfgsm_noise)
        self.sre_lambda = float(sre_lambda)
        self.pgd_steps = int(pgd_steps)
        self.pgd_step_size = float(pgd_step_size)
        self.trades_beta = float(trades_beta)
        self.attack_bn = attack_bn
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        self.reparam = reparam_layers(network)
        self.ensemble = None
        if ensemble:
            self.ensemble = deploy_structure(network)
            self.ensemble.trainable = False
            copy_fused_weights(network, self.ensemble)
        # Counters live in variables so that checkpoints (and BackupAndRestore) carry them.
        self.ensemble_updates = keras.Variable(0, dtype="int64", trainable=False, name="ensemble_updates")
        self.pruned = keras.Variable(False, dtype="bool", trainable=False, name="pruned")
        # Set by structured pruning: from then on the bias and BatchNorm scale/offset of every pruned
        # output channel are kept at zero, so the channel outputs exactly zero.
        self.channels_pruned = keras.Variable(False, dtype="bool", trainable=False, name="channels_pruned")
        self._channel_projection = structural_projection(network, channel_graph(network))
        self.seed_generator = keras.random.SeedGenerator(seed, name="perturbation_seed")
        # A method's own state (Method.state: Keras layers by name), attached from the start so that
        # every stage of the method has the same variables and a checkpoint of any stage restores.
        self._method_state_names = [str(name) for name in (method_state or {})]
        for name, layer in (method_state or {}).items():
            setattr(self, name, layer)  # tracked once, under its own name, as checkpoints have always held it
        # How the current stage changes the step (frep_tf.methods.base.StepHook), set by the stage
        # before it compiles; None: the plain robust step.
        self.step_hook = None
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.clean_acc = keras.metrics.SparseCategoricalAccuracy(name="clean_acc")
        self.adv_acc = keras.metrics.SparseCategoricalAccuracy(name="adv_acc")
        # The functional network (and its ensemble copy) are built already: so is this wrapper.
        self.built = True

    @property
    def method_state(self) -> dict:
        """The method's state layers by name (frep_tf.methods.base.Method.state)."""
        return {name: getattr(self, name) for name in self._method_state_names}

    # -- Keras plumbing ------------------------------------------------------------------------
    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras first all-reduces a sample batch to build unbuilt state, which fails under
        # MultiWorkerMirroredStrategy (a PerReplica it cannot convert); when the network and the
        # optimizer are built (the pipeline builds both), there is nothing to build.
        if self.optimizer is not None and self.optimizer.built and self._compile_metrics is None:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    @property
    def has_clean_forward(self) -> bool:
        return self.objective in ("sre", "trades", "mart", "natural")

    @property
    def metrics(self):
        # Only what the step really computes: fgsm/pgd never see clean logits, natural no adversary.
        tracked = [self.loss_tracker]
        if self.has_clean_forward:
            tracked.append(self.clean_acc)
        if self.objective != "natural":
            tracked.append(self.adv_acc)
        return tracked

    def get_config(self):
        return {
            "network": keras.saving.serialize_keras_object(self.network),
            "objective": self.objective,
            "epsilon": self.epsilon,
            "step_size": self.step_size,
            "perturbation": self.perturbation,
            "nfgsm_noise": self.nfgsm_noise,
            "sre_lambda": self.sre_lambda,
            "pgd_steps": self.pgd_steps,
            "pgd_step_size": self.pgd_step_size,
            "trades_beta": self.trades_beta,
            "attack_bn": self.attack_bn,
            "weight_decay": self.weight_decay,
            "ensemble": self.ensemble is not None,
            "seed": self.seed,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(config.pop("network"))
        return cls(network, **config)

    # -- perturbations ---------------------------------------------------------------------------
    @property
    def _attack_training(self) -> bool:
        return self.attack_bn == "train"

    def _uniform_start(self, x):
        return self._noise_start(x, self.epsilon)

    def _noise_start(self, x, radius):
        """x + U(-radius, radius), clipped to the image range [0, 1]."""
        noise = keras.random.uniform(tf.shape(x), -radius, radius, seed=self.seed_generator)
        return tf.clip_by_value(x + noise, 0.0, 1.0)

    def _sign_step(self, x, x_start, objective_fn, step, project=True):
        with tf.GradientTape() as tape:
            tape.watch(x_start)
            value = tf.reduce_sum(objective_fn(self.network(x_start, training=self._attack_training)))
        grad = tape.gradient(value, x_start)
        if not project:  # N-FGSM: the image range only, no eps-ball
            return tf.clip_by_value(x_start + step * tf.sign(grad), 0.0, 1.0)
        return _project(x_start + step * tf.sign(grad), x, self.epsilon)

    def _single_step(self, x, objective_fn):
        """The perturbation of the single-step objectives (sre, fgsm): one signed step of `step_size` on
        `objective_fn` from a noisy start. fgsm_rs (paper Eq. 12): start in the eps-ball, projected back
        to it; nfgsm (de Jorge et al. 2022): start in the nfgsm_noise x eps box, not projected (both
        stay in [0, 1])."""
        if self.perturbation == "nfgsm":
            start = self._noise_start(x, self.nfgsm_noise * self.epsilon)
            return self._sign_step(x, start, objective_fn, self.step_size, project=False)
        return self._sign_step(x, self._uniform_start(x), objective_fn, self.step_size)

    def _pgd(self, x, x_start, objective_fn):
        x_adv = x_start
        for _ in range(self.pgd_steps):
            x_adv = tf.stop_gradient(self._sign_step(x, x_adv, objective_fn, self.pgd_step_size))
        return x_adv

    # -- the step ----------------------------------------------------------------------------------
    def train_step(self, data):
        x, y = data[0], data[1]
        x = tf.convert_to_tensor(x)
        variables = self.trainable_variables
        obj = self.objective
        logits_clean = None
        hook, watched = self.step_hook, []
        if hook is not None:
            hook.before(self)
            variables = hook.trainable(self, variables)
            watched = hook.watched(self)
        with tf.GradientTape() as tape:
            if watched:
                tape.watch(watched)
            if obj in ("sre", "trades", "mart", "natural"):
                # One clean forward serves both the perturbation target and the loss.
                logits_clean = self.network(x, training=True)
            with tape.stop_recording():
                x_adv = self._perturb(x, y, logits_clean)
            logits_adv = None if x_adv is None else self.network(x_adv, training=True)
            if obj == "sre":
                per_example = losses.sre(logits_clean, logits_adv, y, self.sre_lambda)
            elif obj in ("fgsm", "pgd"):
                per_example = losses.cross_entropy(logits_adv, y)
            elif obj == "trades":
                per_example = losses.trades(logits_clean, logits_adv, y, self.trades_beta)
            elif obj == "mart":
                per_example = losses.mart(logits_clean, logits_adv, y, self.trades_beta)
            else:
                per_example = losses.cross_entropy(logits_clean, y)
            loss = replica_mean(per_example)
            penalty = None if hook is None else hook.penalty(self)
            if penalty is not None:
                loss = loss + penalty / tf.cast(replicas_in_sync(), loss.dtype)
        if watched:
            grads = tape.gradient(loss, variables + watched)
            grads, watched_grads = grads[: len(variables)], grads[len(variables) :]
            routed_grads, routed_vars = hook.routed(self, watched_grads)
            grads, variables = list(grads) + routed_grads, variables + routed_vars
        else:
            grads = tape.gradient(loss, variables)
        if self.weight_decay:
            # Coupled L2 as in PyTorch's SGD(weight_decay=...), which the paper's numbers come from;
            # on factors it amounts to weight decay on the fused weight (paper Eq. 8). Every replica
            # adds its share: the optimizer sums the replicas' gradients, so the total is weight_decay * v
            # whatever the number of replicas (like the loss, which replica_mean scales the same way).
            decay = self.weight_decay / replicas_in_sync()
            grads = [g + decay * v for g, v in zip(grads, variables, strict=True)]
        self.optimizer.apply(grads, variables)
        self._project_pruned_factors()
        self.loss_tracker.update_state(tf.reduce_mean(per_example))
        if logits_clean is not None:
            self.clean_acc.update_state(y, logits_clean)
        if logits_adv is not None:
            self.adv_acc.update_state(y, logits_adv)
        return _per_worker_logs({m.name: m.result() for m in self.metrics})

    def _perturb(self, x, y, logits_clean):
        obj = self.objective
        if obj == "natural":
            return None
        if obj == "sre":
            p_clean = tf.stop_gradient(tf.nn.softmax(logits_clean))
            # Only the consistency term depends on x_adv; lambda does not change the sign.
            objective = lambda logits: losses.squared_l2(tf.nn.softmax(logits), p_clean)  # noqa: E731
            return self._single_step(x, objective)
        if obj == "fgsm":
            objective = lambda logits: losses.cross_entropy(logits, y)  # noqa: E731
            return self._single_step(x, objective)
        if obj in ("pgd", "mart"):
            objective = lambda logits: losses.cross_entropy(logits, y)  # noqa: E731
            return self._pgd(x, self._uniform_start(x), objective)
        # TRADES starts next to x and maximises KL(p(x) || p(x_adv)).
        logits_ref = tf.stop_gradient(logits_clean)
        objective = lambda logits: losses.kl_divergence(logits_ref, logits)  # noqa: E731
        start = x + 0.001 * keras.random.normal(tf.shape(x), seed=self.seed_generator)
        return self._pgd(x, tf.clip_by_value(start, 0.0, 1.0), objective)

    def _project_pruned_factors(self):
        def project():
            for layer in self.reparam:
                layer.project_factors()
            return tf.constant(True)

        def project_channels():
            for var, mask in self._channel_projection:
                alive = tf.reduce_max(tf.reshape(mask, [-1, mask.shape[-1]]), axis=0) > 0
                var.assign(var * tf.cast(alive, var.dtype))
            return tf.constant(True)

        # Before pruning the masks are all ones: skip the work.
        tf.cond(self.pruned, project, lambda: tf.constant(False))
        if self._channel_projection:
            tf.cond(self.channels_pruned, project_channels, lambda: tf.constant(False))

    def test_step(self, data):
        x, y = data[0], data[1]
        logits = self.network(x, training=False)
        self.loss_tracker.update_state(tf.reduce_mean(losses.cross_entropy(logits, y)))
        self.clean_acc.update_state(y, logits)
        return _per_worker_logs({"loss": self.loss_tracker.result(), "clean_acc": self.clean_acc.result()})

    # -- saving ----------------------------------------------------------------------------------
    # Keras weight files (BackupAndRestore, save_weights) hold variables, not SeedGenerator states: the
    # perturbation stream's state goes with them, so a restored adversarial fit draws what the
    # uninterrupted one would have. (Checkpoints of main.py hold model.variables, which include it.)
    def save_own_variables(self, store):
        super().save_own_variables(store)
        store["perturbation_seed"] = self.seed_generator.state.numpy()

    def load_own_variables(self, store):
        super().load_own_variables({k: store[k] for k in store.keys() if k != "perturbation_seed"})
        if "perturbation_seed" in store.keys():  # weight files written before it was saved have none
            self.seed_generator.state.assign(store["perturbation_seed"])

    # -- ensemble -----------------------------------------------------------------------------------
    def ensemble_pairs(self):
        """(ensemble variable, source tensor function) for every weight of the network."""
        if self.ensemble is None:
            return []
        pairs = []
        by_name = {layer.name: layer for layer in self.ensemble.layers}
        for layer in self.network.layers:
            if not layer.weights:
                continue
            dst = by_name[layer.name]
            if layer in self.reparam:
                pairs.append((dst.kernel, layer.fused_kernel))
                if layer.use_bias:
                    pairs.append((dst.bias, lambda b=layer.bias: b))
            else:
                for dv, sv in zip(dst.weights, layer.weights, strict=True):
                    pairs.append((dv, lambda v=sv: v))
        return pairs
