"""The experiment runner end to end through main.py: the shipped digits grid, killed mid-grid and
resumed to the same results as uninterrupted runs; a cell that fails at run time; sharding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from frep_tf.experiments import runner, spec

REPO = runner.REPO_ROOT
QUICK = os.path.join(REPO, "configs", "experiments", "digits_quick.cfg")


def _main(*args, timeout=900):
    return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _evaluation(cell_dir):
    results = json.load(open(os.path.join(cell_dir, "results.json")))
    ev = results["evaluation"]
    return {k: v["accuracy"] for k, v in ev.items() if isinstance(v, dict) and "accuracy" in v}, results["sparsity"]


@pytest.mark.slow
def test_a_killed_grid_resumes_where_it_stopped_and_ends_as_uninterrupted_runs(tmp_path):
    workdir = tmp_path / "grid"
    cells = spec.parse(QUICK).cells()
    assert len(cells) == 4
    second = workdir / cells[1].dir
    kept = tmp_path / "kept"  # the evidence directory (benchmarks/results/<name> by default)
    command = [
        sys.executable,
        "main.py",
        "--mode=experiment",
        f"--experiment={QUICK}",
        f"--workdir={workdir}",
        f"--experiment_results={kept}",
    ]
    proc = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    # Kill the whole grid (runner and the cell it runs) once the second cell has checkpointed an epoch.
    deadline = time.time() + 600
    while not list(second.glob("checkpoint/epoch-*")):  # a complete checkpoint (written, then renamed)
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "the second cell never checkpointed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert (workdir / cells[0].dir / "results.json").is_file()
    assert not (second / "results.json").exists()
    assert not (workdir / cells[2].dir).exists()

    resumed = _main(
        "--mode=experiment", f"--experiment={QUICK}", f"--workdir={workdir}", f"--experiment_results={kept}"
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1 finished, 3 to run" in resumed.stdout
    assert f"cell 1/3 {cells[1].name}: started -> running" in resumed.stdout
    assert "ETA" in resumed.stdout
    log = open(workdir / "logs" / f"{cells[1].name}.log").read()
    assert "resuming from" in log
    for cell in cells:
        assert (workdir / cell.dir / "results.json").is_file()
    assert (workdir / "report.md").is_file()

    # The interrupted cell ends as the same cell run without interruption (deterministic mode).
    experiment = spec.parse(QUICK)
    reference = tmp_path / "reference"
    alone = _main(*experiment.base_args, *cells[1].args(), f"--workdir={reference}", "--verbose=2")
    assert alone.returncode == 0, alone.stderr
    assert _evaluation(second) == _evaluation(reference)

    # Run again: nothing is left to do, no cell runs twice.
    again = _main("--mode=experiment", f"--experiment={QUICK}", f"--workdir={workdir}", f"--experiment_results={kept}")
    assert again.returncode == 0 and "4 finished, 0 to run" in again.stdout

    # Every finished cell's evidence was kept as it finished: results, config, per-epoch scalars, commit.
    for cell in cells:
        saved = kept / cell.dir
        assert json.load(open(saved / "results.json")) == json.load(open(workdir / cell.dir / "results.json"))
        assert json.load(open(saved / "config.json")) == json.load(open(workdir / cell.dir / "config.json"))
        scalars = json.load(open(saved / "scalars.json"))
        assert len(scalars["val_pgd_acc"]) == json.load(open(saved / "config.json"))["train"]["epochs"]
        assert len(json.load(open(saved / "provenance.json"))["commit"]) >= 40
    assert not list(kept.glob("cells/*/checkpoint")) and not list(kept.glob("cells/*/export"))
    # A later session with a fresh workdir finds the kept cells done and runs none of them.
    fresh = _main(
        "--mode=experiment", f"--experiment={QUICK}", f"--workdir={tmp_path / 'fresh'}", f"--experiment_results={kept}"
    )
    assert fresh.returncode == 0 and "4 finished, 0 to run (4 kept" in fresh.stdout, fresh.stdout
    assert not (tmp_path / "fresh" / "cells").exists() or not list((tmp_path / "fresh" / "cells").glob("*/config.json"))
    # The report from the kept evidence alone draws what the workdir's report draws.
    from_kept = _main("--mode=report", f"--workdir={kept}")
    assert from_kept.returncode == 0, from_kept.stderr
    assert sorted(os.listdir(kept / "figures")) == sorted(os.listdir(workdir / "figures"))
    assert "no per-epoch validation curves" not in open(kept / "report.md").read()
    assert "4 finished" in fresh.stdout and f"report: {kept}" in fresh.stdout

    # The report from the experiment workdir alone, without training.
    report = _main("--mode=report", f"--workdir={workdir}")
    assert report.returncode == 0, report.stderr
    text = open(workdir / "report.md").read()
    assert "FReP" in text and "Ori" in text


@pytest.mark.slow
def test_a_cell_failing_at_run_time_is_reported_and_the_others_still_run(tmp_path):
    path = tmp_path / "fails.cfg"
    # 4000 examples per batch is more than digits has: refused at run time, after TensorFlow starts.
    path.write_text(
        f"--flagfile={QUICK.replace('experiments/digits_quick.cfg', 'quickstart.cfg')}\n"
        "--epochs=2\n--prune_epoch=1\n--val_pgd_steps=1\n--eval_attacks=clean\n--eval_samples=50\n"
        "--export=keras\n--noeval_tflite\n--train_samples=400\n--sparsity=0.9\naxis batch_size = 4000 | 32\n"
    )
    workdir = tmp_path / "grid"
    proc = _main(
        "--mode=experiment", f"--experiment={path}", f"--workdir={workdir}", f"--experiment_results={tmp_path / 'kept'}"
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    failed = json.load(open(workdir / "cells" / "batch_size=4000" / "failed.json"))
    assert failed["reason"].startswith("error: --batch_size=4000") and failed["exit_status"] == 2
    assert (workdir / "cells" / "batch_size=32" / "results.json").is_file()
    assert "FAILED" in proc.stdout
    report = open(workdir / "report.md").read()
    assert "batch_size=4000" in report and "--batch_size=4000" in report


@pytest.mark.parametrize("shard, expected", [("0/2", [0, 2]), ("1/2", [1, 3])])
def test_shards_take_every_nth_cell(tmp_path, monkeypatch, shard, expected):
    ran = []
    monkeypatch.setattr(runner, "run_cell", lambda e, cell, w, python=None: (ran.append(cell.name), (0, ""))[1])
    monkeypatch.setattr(runner, "write_report", lambda w, out=None: None)
    kept = str(tmp_path / "kept")
    import flags

    devnull = open(os.devnull, "w")
    assert (
        runner.run(
            QUICK, str(tmp_path / "grid"), shard=shard, out=devnull, results_dir=kept, parse_args=flags.parse_args
        )
        == 0
    )
    cells = spec.parse(QUICK).cells()
    assert ran == [cells[i].name for i in expected]
    stored = json.load(open(tmp_path / "grid" / "experiment.json"))
    assert [c["name"] for c in stored["cells"]] == [c.name for c in cells]
