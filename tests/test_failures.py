"""No traceback, ever: what is not anticipated still ends in one `error:` line naming the stage and the
cause, the traceback in <workdir>/error.log, exit 3, and the last good checkpoint kept and resumable."""

import json
import os
import subprocess
import sys

import keras
import numpy as np

from tests.helpers import TINY_DENSE_RUN_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "main.py")
# Global batch 64.
RUN = [*TINY_DENSE_RUN_FLAGS, "--verbose=0"]

# Runs main.py with one function of the pipeline replaced by one that fails as the real world does.
DRIVER = """
import runpy, sys
sys.path.insert(0, {root!r})
where = sys.argv.pop(1)
if where == "train":
    import tensorflow as tf
    from frep_tf.training.monitor import EpochMonitor
    original = EpochMonitor.on_epoch_end
    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[64,8,8,8]")
    EpochMonitor.on_epoch_end = on_epoch_end
else:
    import errno
    from frep_tf import export
    def export_model(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    export.export_model = export_model
sys.argv = [{main!r}] + sys.argv[1:]
runpy.run_path({main!r}, run_name="__main__")
"""


def _run(args, cwd=ROOT, driver_at=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if driver_at:
        command = [sys.executable, "-c", DRIVER.format(root=ROOT, main=MAIN), driver_at, *args]
    else:
        command = [sys.executable, MAIN, *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


def _error_line(proc):
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    return errors[0]


def test_out_of_memory_in_training_keeps_the_checkpoint_and_resumes(tmp_path):
    workdir = tmp_path / "w"
    proc = _run([*RUN, f"--workdir={workdir}"], driver_at="train")
    assert proc.returncode == 3, proc.stderr[-3000:]
    line = _error_line(proc)
    assert line.startswith("error: the train stage failed: ResourceExhaustedError: OOM when allocating"), line
    assert f"full traceback in {workdir / 'error.log'}" in line
    assert f"{workdir / 'checkpoint' / 'epoch-00001'}, is kept" in line
    log = (workdir / "error.log").read_text()
    assert log.startswith("stage: train") and "Traceback" in log and "on_epoch_end" in log
    assert (workdir / "checkpoint" / "epoch-00001").is_dir() and not (workdir / "results.json").exists()
    # The same command (without the failure) continues from that checkpoint and finishes.
    proc = _run([*RUN, f"--workdir={workdir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from checkpoint/epoch-00001: 1 of 2 epochs done" in proc.stdout
    assert json.loads((workdir / "results.json").read_text())["training"]["epochs"] == 2


def test_disk_full_at_export_names_the_stage(tmp_path):
    workdir = tmp_path / "w"
    proc = _run([*RUN, f"--workdir={workdir}"], driver_at="export")
    assert proc.returncode == 3, proc.stderr[-3000:]
    line = _error_line(proc)
    assert line.startswith("error: the export stage failed: OSError: [Errno 28] No space left on device"), line
    assert f"{workdir / 'checkpoint' / 'epoch-00002'}, is kept" in line
    assert "Traceback" in (workdir / "error.log").read_text()


def test_jit_compile_with_mirrored_is_refused_before_any_work(tmp_path):
    workdir = tmp_path / "never"
    proc = _run(["--dataset=digits", "--jit_compile", "--distribution=mirrored", f"--workdir={workdir}"])
    assert proc.returncode == 2
    assert _error_line(proc).startswith("error: --jit_compile=True: not with --distribution=mirrored")
    assert not workdir.exists()


def test_evaluate_without_workdir_writes_nothing(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    path = tmp_path / "model.keras"
    model.save(path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = _run(["--mode=evaluate", f"--model={path}", "--dataset=digits", "--eval_attacks=clean"], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| Model | Clean |" in proc.stdout
    assert os.listdir(cwd) == []  # no runs/default (training's default workdir), nor anything else
    assert np.isfinite(float(proc.stdout.split("| model.keras |")[1].split("|")[0]))
