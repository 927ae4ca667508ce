"""Inverse weights inheritance (`--method=iwi`): stage 1 trains a small sparse robust network with
--iwi_source (an ordinary resumable run in <workdir>/source/, or --iwi_from names one); the large
network then starts from it (frep_tf.methods.lottery.inherit) and trains densely for --epochs."""

from __future__ import annotations

import dataclasses
import os

from frep_tf.config import Config
from frep_tf.methods.base import Method, Stage
from frep_tf.workdir import EXPORT_DIR, IWI_SOURCE_DIR

SOURCE_DIR = IWI_SOURCE_DIR


class IWI(Method):
    name = "iwi"
    prunes_in_training = False

    def own_runs(self, cfg: Config) -> list[Config]:
        return [] if cfg.method.iwi_from else [source_config(cfg)]

    def before_training(self, cfg: Config, run) -> dict | None:
        results = None
        for source in self.own_runs(cfg):  # none with --iwi_from
            print(f"[frep_tf] iwi stage 1: --method={cfg.method.iwi_source} in {source_path(cfg)}", flush=True)
            results = run(source)
        return results

    def begin(self, stage: Stage, model, cfg: Config):
        if stage.start != 0:
            return None
        import keras

        from frep_tf.fuse import copy_fused_weights
        from frep_tf.methods.lottery import inherit

        source = keras.models.load_model(source_path(cfg), compile=False)
        m = cfg.method
        inherit(model.network, source, fill=m.iwi_fill, tiny=m.iwi_tiny, seed=cfg.run.seed)
        if model.ensemble is not None:
            copy_fused_weights(model.network, model.ensemble)
        return None


def source_path(cfg: Config) -> str:
    """The small network IWI inherits from: --iwi_from, or stage 1's export in <workdir>/source/."""
    return cfg.method.iwi_from or os.path.join(cfg.run.workdir, SOURCE_DIR, EXPORT_DIR, "model.keras")


def source_config(cfg: Config) -> Config:
    """Stage 1 of IWI: an ordinary run of --iwi_source in <workdir>/source/ (its own resumable workdir),
    with every other setting of this run (narrow mapping: at --iwi_source_width), exporting model.keras."""
    run = dataclasses.replace(cfg.run, workdir=os.path.join(cfg.run.workdir, SOURCE_DIR), export="keras")
    method = dataclasses.replace(cfg.method, method=cfg.method.iwi_source)
    model = cfg.model
    if cfg.method.iwi_mapping == "narrow":
        model = dataclasses.replace(model, width=cfg.method.iwi_source_width)
    return dataclasses.replace(cfg, run=run, method=method, model=model)
