"""Every name under a run's --workdir and an experiment's --workdir, defined once (docs/outputs.md,
docs/experiments.md). Plain names and path joins only: no TensorFlow, nothing is read or written here.

A run's workdir (frep_tf.run writes it, frep_tf.resume decides what a run may do with it):

    config.json             the resolved configuration
    results.json            written last: its presence means the run is finished
    checkpoint/             the newest epoch, while the run is unfinished
    tb/                     TensorBoard; tb/frep/ holds the per-epoch validation scalars
    export/                 the exported model in every requested format
    error.log               the traceback of a run that failed unexpectedly
    source/                 --method=iwi: the workdir of its stage 1, a run of its own (the small network)
    .export-staging/, .export-previous/   scratch of the atomic export swap (a kill may leave them)

An experiment's workdir (frep_tf.experiments):

    experiment.json         the parsed experiment
    cells/<name>/           a cell: a run's workdir, plus failed.json when its last attempt failed
    logs/<name>.log         the cell's output; logs/<name>.lock while it runs
    report.md, figures/     the report
    cost.json               each row's training cost measured side by side (--mode=cost)

A cell's evidence (frep_tf.experiments.evidence) adds scalars.json and provenance.json.
"""

from __future__ import annotations

import os

# -- a run ---------------------------------------------------------------------------------------------
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoint"
EXPORT_DIR = "export"
TENSORBOARD_DIR = "tb"
VALIDATION_LOG_DIR = os.path.join(TENSORBOARD_DIR, "frep")  # the epoch monitor's and pruning's scalars
ERROR_LOG = "error.log"
IWI_SOURCE_DIR = "source"
EXPORT_STAGING = ".export-staging"
EXPORT_PREVIOUS = ".export-previous"
SHARED_FILE = "shared_from.json"  # a run the experiment runner copied from a finished cell (not trained here)
# A run's outputs, in the order --overwrite deletes them: config.json first, so an interrupted deletion
# leaves a workdir that is refused (outputs without config.json) instead of one that looks resumable.
OUTPUTS = (CONFIG_FILE, RESULTS_FILE, SHARED_FILE, CHECKPOINT_DIR, EXPORT_DIR, TENSORBOARD_DIR)

# -- an experiment -------------------------------------------------------------------------------------
EXPERIMENT_FILE = "experiment.json"
CELLS_DIR = "cells"
FAILED_FILE = "failed.json"
LOGS_DIR = "logs"
REPORT_FILE = "report.md"
COST_FILE = "cost.json"
FIGURES_DIR = "figures"
# -- a cell's evidence ---------------------------------------------------------------------------------
SCALARS_FILE = "scalars.json"
PROVENANCE_FILE = "provenance.json"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, CHECKPOINT_DIR)


def results_path(workdir: str) -> str:
    return os.path.join(workdir, RESULTS_FILE)


def config_path(workdir: str) -> str:
    return os.path.join(workdir, CONFIG_FILE)


def export_dir(workdir: str) -> str:
    return os.path.join(workdir, EXPORT_DIR)


def validation_log_dir(workdir: str) -> str:
    return os.path.join(workdir, VALIDATION_LOG_DIR)


def cell_dir(name: str) -> str:
    """A cell's directory, relative to the experiment's workdir."""
    return os.path.join(CELLS_DIR, name)


def cell_log(workdir: str, name: str) -> str:
    return os.path.join(workdir, LOGS_DIR, name + ".log")


def cell_lock(workdir: str, name: str) -> str:
    return os.path.join(workdir, LOGS_DIR, name + ".lock")
