"""Runs that survive (docs/outputs.md): workdir rules, checkpoints, the NaN guard, and real kills.

The end-to-end tests start `main.py` in subprocesses on the digits quickstart (4 epochs, pruning at
the start of epoch 3, --deterministic), kill one run with SIGKILL three times (while a checkpoint is
written before pruning, during the epoch after pruning, during export), let it finish, and compare it
with one uninterrupted reference run. benchmarks/kill_resume.py does the same at more moments.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from frep_tf import resume
from frep_tf.config import Config, ConfigError
from frep_tf.validation import validate
from tests.helpers import QUICK_RUN_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = list(QUICK_RUN_FLAGS)


def _cfg(workdir, **flat):
    base = {"dataset": "digits", "arch": "small_cnn", "prune_epoch": 1, "workdir": str(workdir)}
    return validate(Config.from_flat({**base, **flat}))


# -- workdir rules (no TensorFlow) ------------------------------------------------------------------------


def test_differences_name_each_flag_and_skip_settings_that_cannot_change_results(tmp_path):
    old = _cfg(tmp_path, epochs=4, lr=0.05, verbose=2)
    new = _cfg(tmp_path / "elsewhere", epochs=5, lr=0.05, verbose=0, overwrite=True, data_dir="/data")
    assert resume.differences(old.to_dict(), new) == ["--epochs=4 -> 5"]
    assert resume.differences(old.to_dict(), _cfg(tmp_path, epochs=4, lr=0.05, augment=False)) == [
        "--augment=True -> False"
    ]
    # A config.json from before a flag existed: the missing setting counts as its default.
    stored = old.to_dict()
    del stored["run"]["deterministic"]
    assert resume.differences(stored, old) == []
    assert resume.differences(stored, _cfg(tmp_path, epochs=4, lr=0.05, deterministic=True)) == [
        "--deterministic=False -> True"
    ]


def _write(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))


def test_inspect_tells_new_resumable_finished_and_refused_workdirs(tmp_path):
    cfg = _cfg(tmp_path, epochs=4)
    assert not resume.inspect(cfg, schema_version=1).resumable  # does not exist yet
    _write(tmp_path / "notes.txt", "a file of the user's")
    assert not resume.inspect(cfg, schema_version=1).resumable
    _write(tmp_path / "config.json", cfg.to_dict())
    state = resume.inspect(cfg, schema_version=1)
    assert state.resumable and not state.finished
    results = {"schema_version": 1, "mode": "train"}
    for key in ("dataset", "evaluation", "timings", "training", "exports", "sparsity"):
        results[key] = {}
    _write(tmp_path / "results.json", results)
    assert resume.inspect(cfg, schema_version=1).results == results
    with pytest.raises(ConfigError, match=r"--workdir=.*other settings \(--epochs=4 -> 6\); repeat its flags"):
        resume.inspect(_cfg(tmp_path, epochs=6), schema_version=1)
    # --overwrite: the run starts afresh whatever the workdir holds.
    assert not resume.inspect(_cfg(tmp_path, epochs=6, overwrite=True), schema_version=1).finished
    _write(tmp_path / "results.json", {"schema_version": 1, "mode": "train"})
    with pytest.raises(ConfigError, match="results.json is not a complete schema-1 result"):
        resume.inspect(cfg, schema_version=1)
    _write(tmp_path / "config.json", '{"data": {"dataset": "dig')
    with pytest.raises(ConfigError, match="config.json is unreadable"):
        resume.inspect(cfg, schema_version=1)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ConfigError, match="holds results.json but no config.json"):
        resume.inspect(cfg, schema_version=1)


def test_prepare_with_overwrite_deletes_our_outputs_and_nothing_else(tmp_path):
    for name in ("results.json", "checkpoint/epoch-00002/state.json", "export/model.keras", "tb/x", "notes.txt"):
        _write(tmp_path / name, "{}")
    _write(tmp_path / ".results.json.abc123", "half a file")  # a temporary a kill left behind
    _write(tmp_path / ".export-staging/model.keras", "")
    cfg = _cfg(tmp_path, overwrite=True)
    resume.prepare(cfg)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "notes.txt"]
    assert json.loads((tmp_path / "config.json").read_text()) == cfg.to_dict()
    # Killed after results.json but before its clean-up: the next look at the finished run tidies.
    _write(tmp_path / "checkpoint/epoch-00004/state.json", "{}")
    _write(tmp_path / ".config.json.xyz", "")
    resume.tidy_finished(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "notes.txt"]


# -- checkpoints and the NaN guard (in process, tiny model) -------------------------------------------------


def _tiny(seed=0, *, tmp_path):
    import keras

    from frep_tf.data import DatasetInfo
    from tests.helpers import build_and_compile

    keras.utils.set_random_seed(seed)
    cfg = _cfg(tmp_path, width=0.25, epsilon=0.1, epochs=3, prune_epoch=1, ensemble_interval=2, seed=seed)
    info = DatasetInfo("tiny", (8, 8, 1), 10, 64, 0, 0, "none")
    model, decay_steps = build_and_compile(cfg, info, steps_per_epoch=4)
    model.optimizer.build(model.trainable_variables)
    return model


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.random((n, 8, 8, 1)).astype("float32"), rng.integers(0, 10, n).astype("int32")


def test_checkpoint_restores_every_variable_including_the_perturbation_rng(tmp_path):
    from frep_tf.training import checkpoint
    from frep_tf.training.pruning import GlobalPruning, make_schedule

    model = _tiny(0, tmp_path=tmp_path)
    x, y = _data()
    pruning = GlobalPruning(make_schedule("oneshot", 0.9, 4, 4, 4))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[pruning])
    assert bool(model.pruned.numpy()) and int(model.seed_generator.state.numpy()[1]) > 0
    path = checkpoint.save(model, str(tmp_path / "ckpt"), epoch=2, logs={"loss": 1.5, "note": "not a number"})
    assert os.path.basename(path) == "epoch-00002"

    other = _tiny(1, tmp_path=tmp_path)  # other initial values everywhere
    restored = checkpoint.restore(other, path)
    assert (restored.epoch, restored.logs) == (2, {"loss": 1.5})
    saved = checkpoint.tracked_variables(model)
    loaded = checkpoint.tracked_variables(other)
    names = {v.path for v in loaded}
    # What Keras' save_weights leaves out (the RNG state) and what resuming needs most is here.
    assert "perturbation_seed/seed_generator_state" in names and "pruned" in names and "ensemble_updates" in names
    assert any(v.path.endswith("iteration") for v in loaded) and any("momentum" in v.path for v in loaded)
    for a, b in zip(saved, loaded, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


def test_damaged_or_foreign_checkpoints_are_reported_not_loaded(tmp_path):
    from frep_tf.training import checkpoint

    model = _tiny(0, tmp_path=tmp_path)
    directory = str(tmp_path / "ckpt")
    path = checkpoint.save(model, directory, epoch=1)
    # A kill while writing leaves a temporary directory: never taken for a checkpoint.
    os.makedirs(os.path.join(directory, ".tmp-abc"))
    assert checkpoint.latest(directory) == path
    before = [np.asarray(v).copy() for v in checkpoint.tracked_variables(model)]

    npz = os.path.join(path, "variables.npz")
    data = bytearray(open(npz, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(npz, "wb").write(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match=r"epoch-00001/variables.npz is damaged"):
        checkpoint.restore(model, path)
    os.remove(npz)
    with pytest.raises(checkpoint.CheckpointError, match="variables.npz is missing"):
        checkpoint.restore(model, path)
    for a, b in zip(before, checkpoint.tracked_variables(model), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))  # nothing was half-loaded

    from frep_tf.data import DatasetInfo
    from tests.helpers import build_and_compile

    path = checkpoint.save(model, directory, epoch=2)
    wider_cfg = _cfg(tmp_path, width=0.5, epsilon=0.1)
    wider, _ = build_and_compile(wider_cfg, DatasetInfo("tiny", (8, 8, 1), 10, 64, 0, 0, "none"), 4)
    wider.optimizer.build(wider.trainable_variables)
    # The first variable that differs is named with both shapes (the model tracks the BatchNorm scales of
    # its structural channel projection first, so that is bn1's scale: 8 channels there, 16 here).
    with pytest.raises(
        checkpoint.CheckpointError,
        match=r"written by another model: variable 0 is bn1/gamma \(8,\) float32 there, bn1/gamma \(16,\) float32 here",
    ):
        checkpoint.restore(wider, path)
    checkpoint.prune_others(directory, keep=path)
    assert os.listdir(directory) == ["epoch-00002"]


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    import keras

    from frep_tf.training import checkpoint
    from frep_tf.training.guards import NonFiniteLossError, StopOnNonFiniteLoss

    class Poison(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:  # the second epoch diverges
                layer = self.model.reparam[0]
                layer.factor_a.assign(np.full(layer.factor_a.shape, np.nan, np.float32))

    model = _tiny(0, tmp_path=tmp_path)
    x, y = _data()
    directory = str(tmp_path / "ckpt")
    callbacks = [Poison(), StopOnNonFiniteLoss(), checkpoint.EpochCheckpoint(directory)]
    with pytest.raises(NonFiniteLossError, match=r"training diverged: the loss is nan in epoch 2, batch 1"):
        model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=callbacks)
    assert [os.path.basename(p) for p in checkpoint.complete(directory)] == ["epoch-00001"]
    fresh = _tiny(0, tmp_path=tmp_path)
    restored = checkpoint.restore(fresh, checkpoint.latest(directory))
    assert restored.epoch == 1 and np.isfinite(restored.logs["loss"])
    assert all(np.all(np.isfinite(np.asarray(v))) for v in fresh.network.weights)


def test_a_resumed_stream_sees_the_batches_of_an_uninterrupted_one():
    from frep_tf import data

    kwargs = dict(
        seed=3,
        batch_size=16,
        synthetic_shape=(12, 10, 3),
        synthetic_size=(80, 24),
        augmentation="crop_flip",
        deterministic=True,
    )
    steps = data.load_dataset("synthetic", **kwargs).info.num_train // 16
    whole = [x.numpy() for x, _ in data.load_dataset("synthetic", **kwargs).train_from(0).take(3 * steps)]
    resumed = [x.numpy() for x, _ in data.load_dataset("synthetic", **kwargs).train_from(2).take(steps)]
    for a, b in zip(whole[2 * steps :], resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(whole[0], whole[steps]), "epochs are reshuffled and re-augmented"


# -- real processes, real SIGKILLs ---------------------------------------------------------------------------


def _start(workdir, *extra, kill_at=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("FREP_TF_TEST_KILL_AT", None)
    if kill_at:
        env["FREP_TF_TEST_KILL_AT"] = kill_at
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "main.py"), *FLAGS, f"--workdir={workdir}", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _run(workdir, *extra, kill_at=None, kill_when=None, delay=0.0, timeout=600):
    """Run main.py to its end, or SIGKILL it `delay` s after `kill_when(output so far)` first holds
    (polled every 50 ms). Returns (returncode, output)."""
    proc = _start(workdir, *extra, kill_at=kill_at)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while kill_when is not None and proc.poll() is None and time.monotonic() < deadline:
            if kill_when("".join(lines)):
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=30)
    return proc.returncode, "".join(lines)


def _strip(results):
    """results.json without wall-clock fields, the process's peak memory and the SavedModel's byte size
    (process-dependent names)."""
    if isinstance(results, dict):
        out = {k: _strip(v) for k, v in results.items() if k not in ("timings", "seconds", "peak_rss_mb")}
        if out.get("format") == "saved_model":
            out.pop("bytes")
        return out
    if isinstance(results, list):
        return [_strip(v) for v in results]
    return results


def _weights(workdir):
    import keras

    model = keras.models.load_model(os.path.join(workdir, "export", "model.keras"), compile=False)
    return [(w.path, w.numpy()) for w in model.weights]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, shared. Started in a workdir that holds a finished run made with other
    flags and a file of the user's: --overwrite must replace the run and keep the file."""
    workdir = tmp_path_factory.mktemp("reference")
    stale = Config.from_flat({**Config().flat(), "epochs": 7, "workdir": str(workdir)}).to_dict()
    _write(workdir / "config.json", stale)
    _write(workdir / "results.json", {"schema_version": 1, "mode": "train", "stale": True})
    _write(workdir / "notes.txt", "the user's")
    code, output = _run(workdir, "--overwrite")
    assert code == 0, output[-4000:]
    return workdir, output


def test_overwrite_started_afresh_and_kept_foreign_files(reference):
    workdir, _ = reference
    assert (workdir / "notes.txt").read_text() == "the user's"
    assert json.loads((workdir / "config.json").read_text())["train"]["epochs"] == 4
    assert "stale" not in json.loads((workdir / "results.json").read_text())
    # Finished: the training state is gone, nothing temporary is left.
    assert sorted(os.listdir(workdir)) == ["config.json", "export", "notes.txt", "results.json", "tb"]


def test_a_run_killed_three_times_finishes_exactly_like_an_uninterrupted_one(reference, tmp_path):
    ref_dir, _ = reference
    workdir = tmp_path / "killed"
    # 1. Before pruning, while the epoch-2 checkpoint is being written (the one moment a hook is
    #    needed for: the checkpoint is complete under its temporary name, not yet renamed).
    code, output = _run(workdir, kill_at="checkpoint:2")
    assert code == -signal.SIGKILL, output[-3000:]
    complete = [n for n in os.listdir(workdir / "checkpoint") if not n.startswith(".tmp-")]
    assert complete == ["epoch-00001"] and len(os.listdir(workdir / "checkpoint")) == 2  # + the temporary
    # 2. After pruning: killed from outside as soon as the epoch-3 checkpoint exists.
    code, output = _run(workdir, kill_when=lambda _: (workdir / "checkpoint" / "epoch-00003").exists())
    assert code == -signal.SIGKILL, output[-3000:]
    assert "resuming from checkpoint/epoch-00001: 1 of 4 epochs done" in output
    # 3. During export, half a second after it starts.
    code, output = _run(workdir, kill_when=lambda out: "[frep_tf] export ..." in out, delay=0.5)
    assert code == -signal.SIGKILL, output[-3000:]
    assert "resuming from checkpoint/epoch-00003: 3 of 4 epochs done" in output
    assert not (workdir / "results.json").exists()
    code, output = _run(workdir)
    assert code == 0, output[-3000:]
    assert "resuming from checkpoint/epoch-00004: 4 of 4 epochs done" in output

    ref = json.loads((ref_dir / "results.json").read_text())
    got = json.loads((workdir / "results.json").read_text())
    assert _strip(got) == _strip(ref)
    assert got["training"]["steps"] == 160 and got["sparsity"]["kernels"] >= 0.99 - 1e-6
    for (name, a), (_, b) in zip(_weights(ref_dir), _weights(workdir), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)  # masks (the zeros) and every value
    assert sorted(os.listdir(workdir)) == ["config.json", "export", "results.json", "tb"]


def test_the_same_command_on_a_finished_workdir_prints_its_results(reference):
    workdir, _ = reference
    before = (workdir / "results.json").stat().st_mtime_ns
    t = time.perf_counter()
    code, output = _run(workdir)
    assert code == 0, output
    assert time.perf_counter() - t < 60  # no TensorFlow, no training: typically under a second
    assert "holds a finished run with these settings" in output and "| Model | Clean | FGSM | PGD |" in output
    assert (workdir / "results.json").stat().st_mtime_ns == before


def test_other_flags_on_a_finished_workdir_are_refused(reference):
    workdir, _ = reference
    proc = subprocess.run(
        [sys.executable, "main.py", *FLAGS, f"--workdir={workdir}", "--epochs=5", "--sparsity=0.9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "(--epochs=4 -> 5, --sparsity=0.99 -> 0.9)" in errors[0]


def test_a_diverging_run_stops_with_status_3_and_writes_no_results(tmp_path):
    workdir = tmp_path / "nan"
    code, output = _run(workdir, "--lr=1e30", "--epochs=2", "--prune_epoch=1")
    assert code == 3, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output
    assert "training diverged: the loss is" in errors[0] and "no epoch had finished" in errors[0]
    assert not (workdir / "results.json").exists() and not (workdir / "export").exists()
