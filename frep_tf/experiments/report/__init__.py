"""The report of an experiment: `report.md` and PNG figures, rebuilt from the cells that have finished.

    from frep_tf.experiments.report import write_report
    summary = write_report("runs/t4")      # or: python -m frep_tf.experiments.report runs/t4

Input (the layout the experiment runner writes; cells may come from several machines copied together):

    <workdir>/experiment.json   {"name", "file", "base_flags", "axes": [{"flag", "values"}], "cells": [{"name", "dir", "flags"}],
                                 "claims": [{"label", "metric", "op", "a", "b", "line"}] (optional)}
    <workdir>/cells/<name>/     an ordinary run's workdir: config.json, results.json once finished,
                                tb/frep/ (per-epoch scalars), failed.json {"reason", "exit_status"} if it failed;
                                a committed cell (frep_tf.experiments.evidence) has scalars.json instead of tb/

Without experiment.json the cells are found as cells/*/config.json and the settings that differ between
them are the axes. Every axis but `seed` defines a table row (method x sparsity x structured x ...);
seeds are the replicates a row's mean +- std is taken over.

Output: <workdir>/report.md and <workdir>/figures/ (the figures are listed in `figures`).

One concern per module: `cells` reads the workdir, `stats` groups finished cells into rows and takes
their statistics, `claims` judges the experiment's claims on those rows, `tables` and `markdown` write
the text, `figures` draws, `write` puts them together.
Neither TensorFlow nor Keras is imported: results.json and config.json are JSON, and TensorBoard event
files are read by frep_tf.experiments.tb_events with the protos the tensorboard package ships.
"""

from frep_tf.experiments.report.cells import Cell, ReportError, load_experiment
from frep_tf.experiments.report.stats import (
    BASELINE_NAMES,
    METHOD_ORDER,
    Row,
    build_rows,
    common_settings,
    epoch_marks,
    method_name,
    trained_sparsity,
)
from frep_tf.experiments.report.tables import row_label
from frep_tf.experiments.report.write import main, write_report
from frep_tf.experiments.tb_events import read_scalars

__all__ = [
    "BASELINE_NAMES",
    "METHOD_ORDER",
    "Cell",
    "ReportError",
    "Row",
    "build_rows",
    "common_settings",
    "epoch_marks",
    "load_experiment",
    "main",
    "method_name",
    "read_scalars",
    "row_label",
    "trained_sparsity",
    "write_report",
]
