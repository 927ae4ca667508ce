"""What every run sets up first: TensorFlow (seed, determinism, distribution), the data, the model."""

from __future__ import annotations

import sys

from frep_tf.config import Config, ConfigError


def setup_tf(cfg: Config):
    """Seeds and determinism set, the distribution strategy made; returns the strategy."""
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
        perturbation=t.perturbation,
        nfgsm_noise=t.nfgsm_noise,
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


def verbose(cfg: Config) -> int:
    if cfg.run.verbose >= 0:
        return cfg.run.verbose
    return 1 if sys.stdout.isatty() else 2
