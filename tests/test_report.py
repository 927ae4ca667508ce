"""The experiment report (frep_tf.experiments.report) on a synthetic experiment workdir: the table's
numbers against an independent mean / std, the figures, failed and pending cells, discovery without
experiment.json, TensorBoard files read without TensorFlow."""

import json
import os
import shutil
import statistics
import struct
import subprocess
import sys

import numpy as np
import pytest

from frep_tf.config import Config
from frep_tf.experiments import report
from frep_tf.weight_stats import histogram_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAMS = ("plain", "hadamard")
SPARSITIES = (0.9, 0.99)
SEEDS = (0, 1, 2)
ATTACKS = ("clean", "fgsm", "pgd", "autoattack")
EPOCHS = 4
FAILED = "plain-0.99-seed2"
STARTED = "hadamard-0.99-seed2"  # config.json only: a cell in progress
ABSENT = "hadamard-0.9-seed2"  # listed in experiment.json, never started (another shard's)
STALE_FAILURE = "plain-0.9-seed0"
RESUMED = "hadamard-0.99-seed0"  # its last epoch is written again by a second process


def cell_name(p, s, seed):
    return f"{p}-{s}-seed{seed}"


def synthetic_results(rng, p, s, seed):
    clean = rng.uniform(0.8, 0.95)
    robust = sorted(rng.uniform(0.2, clean, len(ATTACKS) - 1), reverse=True)  # FGSM >= PGD >= AA
    accuracies = dict(zip(ATTACKS, [clean, *robust], strict=True))
    kernel = rng.normal(0, 0.1 if p == "plain" else 0.01, size=1000)
    kernel[: int(s * 1000)] = 0
    return {
        "schema_version": 1,
        "mode": "train",
        "dataset": {"name": "digits"},
        "model": {"arch": "small_cnn", "parameterization": p, "evaluated_path": "export/model.keras"},
        "sparsity": {"kernels": float(s + rng.uniform(0, 1e-3)), "all_parameters": s - 0.01},
        "weight_histogram": histogram_of([kernel]),
        "evaluation": {
            **{a: {"accuracy": float(v), "samples": 360, "seconds": 1.0} for a, v in accuracies.items()},
            "config": {"epsilon": 0.1},
            "sanity": {"passed": True, "checks": {}},
        },
        "exports": [
            {"format": "keras", "path": "export/model.keras", "bytes": int(rng.integers(400_000, 500_000))},
            {
                "format": "tflite_sparse",
                "path": "export/model_sparse.tflite",
                "bytes": int(rng.integers(9_000, 60_000)),
            },
        ],
        "training": {"epochs": EPOCHS},
        "timings": {"train": float(rng.uniform(10, 20)), "total": float(rng.uniform(25, 40))},
    }


def write_config(cell_dir, p, s, seed):
    cfg = Config.from_flat({"dataset": "digits", "parameterization": p, "sparsity": s, "seed": seed, "prune_epoch": 1})
    os.makedirs(cell_dir, exist_ok=True)
    with open(os.path.join(cell_dir, "config.json"), "w") as fh:
        fh.write(cfg.to_json())


def write_curves(log_dir, rng, curves=None, first=0, new_process=False):
    """Per-epoch scalars as EpochMonitor writes them (tf.summary.scalar, i.e. tensor summaries), from
    epoch `first` on, in a new event file; with `new_process`, the file is named as another process's
    (event files are named events.out.tfevents.<time>.<host>.<pid>.<n>.v2)."""
    import tensorflow as tf

    tags = ("val_pgd_acc", "val_ensemble_pgd_acc", "ensemble_delta")
    curves = curves or {tag: rng.uniform(0, 1, EPOCHS) for tag in tags}
    before = set(os.listdir(log_dir)) if os.path.isdir(log_dir) else set()
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        for epoch in range(first, EPOCHS):
            for tag, values in curves.items():
                tf.summary.scalar(tag, float(values[epoch]), step=epoch)
    writer.close()
    if new_process:
        (name,) = set(os.listdir(log_dir)) - before
        parts = name.split(".")
        parts[-3] = str(int(parts[-3]) + 1)  # the pid
        os.rename(os.path.join(log_dir, name), os.path.join(log_dir, ".".join(parts)))
    return curves


def write_pruning_log(log_dir):
    """A second event file of the same process in tb/frep, as GlobalPruning writes one next to the
    monitor's: not a resume."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        tf.summary.scalar("kept_fraction/conv1", 0.5, step=3)
    writer.close()


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A 12-cell experiment: 9 finished (with TensorBoard curves), 1 failed, 1 started, 1 not started."""
    workdir = str(tmp_path_factory.mktemp("experiment"))
    rng = np.random.default_rng(0)
    cells, results, curves = [], {}, {}
    for p in PARAMS:
        for s in SPARSITIES:
            for seed in SEEDS:
                name = cell_name(p, s, seed)
                cells.append(
                    {
                        "name": name,
                        "dir": f"cells/{name}",
                        "flags": {"parameterization": p, "sparsity": str(s), "seed": str(seed)},
                    }
                )
                cell_dir = os.path.join(workdir, "cells", name)
                if name == ABSENT:
                    continue
                write_config(cell_dir, p, s, seed)
                if name == FAILED:
                    with open(os.path.join(cell_dir, "failed.json"), "w") as fh:
                        json.dump({"reason": "training diverged: loss is NaN\n at epoch 3", "exit_status": 3}, fh)
                elif name != STARTED:
                    results[name] = synthetic_results(rng, p, s, seed)
                    with open(os.path.join(cell_dir, "results.json"), "w") as fh:
                        json.dump(results[name], fh)
                    curves[name] = write_curves(os.path.join(cell_dir, "tb", "frep"), rng)
                    write_pruning_log(os.path.join(cell_dir, "tb", "frep"))
                    if name == RESUMED:
                        log_dir = os.path.join(cell_dir, "tb", "frep")
                        write_curves(log_dir, rng, curves[name], first=EPOCHS - 1, new_process=True)
                    if name == STALE_FAILURE:  # an earlier attempt failed; results.json says it is done now
                        with open(os.path.join(cell_dir, "failed.json"), "w") as fh:
                            json.dump({"reason": "killed", "exit_status": 137}, fh)
    axes = [
        {"flag": "parameterization", "values": list(PARAMS)},
        {"flag": "sparsity", "values": [str(s) for s in SPARSITIES]},
    ]
    axes.append({"flag": "seed", "values": [str(s) for s in SEEDS]})
    spec = {"name": "synthetic", "file": "configs/experiments/x.cfg", "base_flags": [], "axes": axes, "cells": cells}
    with open(os.path.join(workdir, "experiment.json"), "w") as fh:
        json.dump(spec, fh)
    summary = report.write_report(workdir)
    return workdir, summary, results, curves


def table_lines(text):
    section = text.split("## Robust accuracy", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ")]


def test_table_has_mean_and_sample_std_over_seeds(experiment):
    workdir, summary, results, _ = experiment
    with open(os.path.join(workdir, "report.md")) as fh:
        lines = table_lines(fh.read())
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["Method", "Sparsity", "Clean", "FGSM", "PGD", "AA", "n", "Deployed size", "Measured sparsity"]
    body = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in lines[1:]}
    # Paper order: Ori before FReP, sparsity ascending.
    assert list(body) == [("Ori", "90 %"), ("Ori", "99 %"), ("FReP", "90 %"), ("FReP", "99 %")]
    for p, method in (("plain", "Ori"), ("hadamard", "FReP")):
        for s in SPARSITIES:
            names = [cell_name(p, s, seed) for seed in SEEDS if cell_name(p, s, seed) in results]
            cols = [c.strip() for c in body[(method, f"{100 * s:g} %")].strip("|").split("|")]
            for attack, col in zip(ATTACKS, cols[2:6], strict=True):
                values = [100 * results[n]["evaluation"][attack]["accuracy"] for n in names]
                assert col == f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}", (p, s, attack)
            assert cols[6] == str(len(names))
            smallest = statistics.mean(min(e["bytes"] for e in results[n]["exports"]) for n in names)
            assert cols[7] == f"{smallest / 1000:.1f} kB (`model_sparse.tflite`)"
            measured = [100 * results[n]["sparsity"]["kernels"] for n in names]
            assert cols[8] == f"{statistics.mean(measured):.2f} ± {statistics.stdev(measured):.2f} %"
    rows = {(r["method"], r["sparsity"]): r for r in summary["rows"]}
    assert rows[("Ori", 0.99)]["n"] == 2 and rows[("FReP", 0.99)]["n"] == 2 and rows[("FReP", 0.9)]["n"] == 2
    assert rows[("Ori", 0.9)]["seeds"] == [0, 1, 2]


def test_every_figure_is_a_png_named_in_the_report(experiment):
    workdir, summary, _, _ = experiment
    from matplotlib import image

    with open(os.path.join(workdir, "report.md")) as fh:
        text = fh.read()
    assert set(summary["figures"]) == {"fig8", "fig7", "fig5"}
    for path in summary["figures"].values():
        with open(path, "rb") as fh:
            head = fh.read(24)
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", head[16:24])
        assert 300 < width < 3000 and 300 < height < 3000
        pixels = image.imread(path)
        assert pixels.std() > 0.05  # something is drawn
        assert f"]({os.path.relpath(path, workdir)})" in text


def test_failed_and_pending_cells_are_reported(experiment):
    workdir, summary, _, _ = experiment
    with open(os.path.join(workdir, "report.md")) as fh:
        text = fh.read()
    assert summary["cells"] == {"total": 12, "finished": 9, "failed": 1, "pending": 2}
    assert summary["failed"] == [
        {"name": FAILED, "reason": "training diverged: loss is NaN\n at epoch 3", "exit_status": 3}
    ]
    assert sorted(summary["pending"]) == sorted([STARTED, ABSENT])
    assert f"- `{FAILED}`: training diverged: loss is NaN at epoch 3 (exit status 3)" in text
    assert "12 — 9 finished, 1 failed, 2 pending (1 started)" in text
    assert f"`{STARTED}`" in text.split("## Pending cells", 1)[1]


def test_cost_table_per_cell(experiment):
    workdir, _, results, _ = experiment
    with open(os.path.join(workdir, "report.md")) as fh:
        text = fh.read().split("## Cost", 1)[1]
    for name, r in results.items():
        t = r["timings"]
        seed = name.rsplit("seed", 1)[1]
        line = next(line for line in text.splitlines() if line.startswith(f"| `{name}`"))
        assert line.endswith(f"| {seed} | {EPOCHS} | {t['train']:.1f} | {t['total']:.1f} |")
        assert ("*resumed*" in line) == (name == RESUMED)
    assert "compare methods by their training cost from `--mode=cost`, not by these" in text


def test_curves_are_read_from_the_tensorboard_files(experiment):
    workdir, _, _, curves = experiment
    name = cell_name("hadamard", 0.9, 1)
    scalars = report.read_scalars(os.path.join(workdir, "cells", name, "tb", "frep"))
    for tag, values in curves[name].items():
        assert sorted(scalars[tag]) == list(range(EPOCHS))
        np.testing.assert_allclose([scalars[tag][e] for e in range(EPOCHS)], values, rtol=1e-6)


def test_a_rewritten_epoch_counts_once_and_a_torn_record_is_ignored(tmp_path):
    import tensorflow as tf

    for values in ((0.1, 0.2, 0.3), (None, None, 0.5, 0.6)):  # a resumed run writes epoch 2 again
        writer = tf.summary.create_file_writer(str(tmp_path))
        with writer.as_default():
            for step, v in enumerate(values):
                if v is not None:
                    tf.summary.scalar("val_pgd_acc", v, step=step)
        writer.close()
    newest = sorted(os.listdir(tmp_path))[-1]
    with open(tmp_path / newest, "ab") as fh:  # a writer killed mid-record
        fh.write(struct.pack("<Q", 100) + b"\0" * 20)
    scalars = report.read_scalars(str(tmp_path))
    assert {k: round(v, 6) for k, v in scalars["val_pgd_acc"].items()} == {0: 0.1, 1: 0.2, 2: 0.5, 3: 0.6}


@pytest.fixture(scope="module")
def discovered(experiment, tmp_path_factory):
    """The cells alone (copied from their machines, no experiment.json): (workdir, summary)."""
    workdir, _, _, _ = experiment
    copy = tmp_path_factory.mktemp("copied")
    shutil.copytree(os.path.join(workdir, "cells"), copy / "cells")
    return copy, report.write_report(str(copy))


def test_without_experiment_json_the_differing_settings_are_the_axes(experiment, discovered):
    _, summary, _, _ = experiment
    copy, found = discovered
    _, _, axes, _ = report.load_experiment(str(copy))
    assert [flag for flag, _ in axes] == ["parameterization", "seed", "sparsity"]
    assert dict(axes)["sparsity"] == [0.9, 0.99]
    # The never-started cell is unknown without experiment.json; everything else is the same.
    assert found["cells"] == {"total": 11, "finished": 9, "failed": 1, "pending": 1}
    assert found["rows"] == summary["rows"]
    assert set(found["figures"]) == {"fig8", "fig7", "fig5"}
    with open(copy / "report.md") as fh:
        assert "No experiment.json: cells found as `cells/*/config.json`" in fh.read()


def test_a_fresh_process_writes_the_same_bytes_without_tensorflow(experiment, tmp_path):
    """Same cells, another process (another hash seed, another directory): byte-identical report.md and
    PNGs, so a grid resumed after a kill can be compared with an uninterrupted one; and no TensorFlow."""
    workdir, summary, _, _ = experiment
    copy = tmp_path / "w"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("report.md", "figures"))
    code = (
        "import sys; from frep_tf.experiments.report import write_report; write_report(sys.argv[1]); "
        "print([m for m in ('tensorflow', 'keras') if m in sys.modules])"
    )
    env = dict(os.environ, PYTHONHASHSEED="123")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(copy)], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"  # neither module was imported
    for path in [os.path.join(workdir, "report.md"), *summary["figures"].values()]:
        rel = os.path.relpath(path, workdir)
        with open(path, "rb") as a, open(copy / rel, "rb") as b:
            assert a.read() == b.read(), rel


def test_an_axis_over_several_flags_is_one_axis_per_flag(tmp_path):
    """The runner's experiment.json for `axis sparsity structured = 0.9 false | 0.5 true`."""
    cells = []
    for s, st in (("0.9", "false"), ("0.5", "true")):
        name = f"sparsity={s},structured={st}"
        cells.append({"name": name, "dir": f"cells/{name}", "flags": {"sparsity": s, "structured": st}})
        cfg = Config.from_flat({"dataset": "digits", "sparsity": float(s), "structured": st == "true"})
        os.makedirs(tmp_path / "cells" / name)
        (tmp_path / "cells" / name / "config.json").write_text(cfg.to_json())
        (tmp_path / "cells" / name / "results.json").write_text(json.dumps({"evaluation": {}}))
    axis = {
        "flag": "sparsity structured",
        "flags": ["sparsity", "structured"],
        "values": [["0.9", "false"], ["0.5", "true"]],
    }
    (tmp_path / "experiment.json").write_text(json.dumps({"name": "x", "axes": [axis], "cells": cells}))
    _, loaded, axes, problems = report.load_experiment(str(tmp_path))
    assert axes == [("sparsity", [0.9, 0.5]), ("structured", [False, True])] and problems == []
    rows = report.build_rows(loaded, axes)
    assert [(r.method, r.sparsity, r.structured, r.others) for r in rows] == [
        ("FReP", 0.9, False, {}),
        ("FReP", 0.5, True, {}),
    ]


def test_unusable_workdirs_are_one_line_errors(tmp_path):
    with pytest.raises(report.ReportError, match=r"^--workdir=.*missing: not a directory$"):
        report.write_report(str(tmp_path / "missing"))
    with pytest.raises(report.ReportError, match=r"no experiment.json and no cells/\*/config.json"):
        report.write_report(str(tmp_path))
    (tmp_path / "experiment.json").write_text('{"cells": [\n{"name": "a",}]}')
    with pytest.raises(report.ReportError, match=r"experiment.json: not valid JSON \(line 2: "):
        report.write_report(str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "frep_tf.experiments.report", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def test_a_damaged_results_file_fails_its_cell_not_the_report(tmp_path):
    write_config(str(tmp_path / "cells" / "a"), "plain", 0.9, 0)
    (tmp_path / "cells" / "a" / "results.json").write_text('{"evaluation": ')
    summary = report.write_report(str(tmp_path))
    assert summary["cells"] == {"total": 1, "finished": 0, "failed": 1, "pending": 0}
    (failed,) = summary["failed"]
    assert failed["name"] == "a" and "results.json: not valid JSON (line 1" in failed["reason"]
    assert summary["figures"] == {}
    assert "No cell has finished yet." in (tmp_path / "report.md").read_text()


def test_every_method_has_its_papers_name_in_reports():
    from frep_tf.config import METHODS

    # frep's rows are named by parameterization (FReP / FReP-CH / Ori); every other method by its paper.
    assert set(METHODS) - {"frep"} == set(report.BASELINE_NAMES)
    assert set(report.BASELINE_NAMES.values()) <= set(report.METHOD_ORDER)


def test_paths_inside_a_checkout_are_shown_relative_to_it(tmp_path):
    from frep_tf.experiments.report.markdown import checkout_relative

    checkout = tmp_path / "worktree"
    (checkout / "frep_tf").mkdir(parents=True)
    (checkout / "main.py").write_text("")
    (checkout / "configs" / "experiments").mkdir(parents=True)
    inside = str(checkout / "configs" / "experiments" / "grid.cfg")
    assert checkout_relative(inside) == os.path.join("configs", "experiments", "grid.cfg")
    outside = str(tmp_path / "elsewhere" / "grid.cfg")
    assert checkout_relative(outside) == outside
    assert checkout_relative("configs/a.cfg") == "configs/a.cfg"
