"""Bad input of every kind, through the real `python main.py`: one clear line, exit status 2.

Each case runs main.py in a subprocess and checks: exit status 2; exactly one line on stderr that
starts with "error:" and names what is wrong; no traceback; the workdir untouched (not created if it
did not exist, every file as it was if it did). Most cases are caught before TensorFlow starts
(flags, paths, workdir state: well under a second each); the rest need TensorFlow (data contents,
model files probed with the dataset's images, a damaged checkpoint).
"""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from frep_tf.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--dataset=digits", "--arch=small_cnn", "--epochs=2", "--prune_epoch=1", "--batch_size=32"]


def _config_json(workdir, **changes) -> dict:
    """The config.json a run of BASE (plus `changes`) writes."""
    flat = {"dataset": "digits", "arch": "small_cnn", "epochs": 2, "prune_epoch": 1, "batch_size": 32}
    return Config.from_flat({**flat, **changes, "workdir": str(workdir)}).to_dict()


def _write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode) as fh:
        fh.write(content if isinstance(content, (str, bytes)) else json.dumps(content))


# Set-ups: f(tmp, workdir) creates what the case needs.
def _a_file(tmp, workdir):
    _write(str(workdir), "a file where the workdir should be")


def _made_with_other_flags(tmp, workdir):
    _write(f"{workdir}/config.json", _config_json(workdir, epochs=3))
    _write(f"{workdir}/checkpoint/epoch-00001/state.json", "{}")


def _garbage_config(tmp, workdir):
    _write(f"{workdir}/config.json", '{"data": {"dataset": "dig')


def _garbage_results(tmp, workdir):
    _write(f"{workdir}/config.json", _config_json(workdir))
    _write(f"{workdir}/results.json", "")


def _outputs_without_config(tmp, workdir):
    _write(f"{workdir}/checkpoint/epoch-00003/state.json", "{}")


def _damaged_checkpoint(tmp, workdir):
    _write(f"{workdir}/config.json", _config_json(workdir))
    state = {"format": 1, "epoch": 1, "logs": {}, "variables": [], "sha256": "0" * 64}
    _write(f"{workdir}/checkpoint/epoch-00001/state.json", state)
    _write(f"{workdir}/checkpoint/epoch-00001/variables.npz", b"PK\x03\x04 half a zip file")


def _npz(**arrays):
    def setup(tmp, workdir):
        np.savez(os.path.join(tmp, "data.npz"), **arrays)

    return setup


def _files(tmp, workdir):
    _write(f"{tmp}/bad.keras", "not a zip archive")
    _write(f"{tmp}/bad.tflite", b"\x00" * 64)
    _write(f"{tmp}/model.h5", b"\x89HDF")
    os.makedirs(f"{tmp}/not_a_savedmodel", exist_ok=True)
    os.makedirs(f"{tmp}/empty_tfds", exist_ok=True)
    _write(f"{tmp}/afile", "")


EVALUATE = ["--mode=evaluate", "--eval_attacks=clean"]

# (id, extra flags, set-up, text the error line must contain). In flags and that text, {tmp} is the
# case's scratch directory, {models} the shared directory of small Keras models, {workdir} the workdir.
CASES = [
    # -- flag values and combinations (before TensorFlow)
    ("sparsity_range", ["--sparsity=1.5"], None, "--sparsity=1.5: must lie in [0, 1)"),
    ("epochs_zero", ["--epochs=0"], None, "--epochs=0: must be a positive integer"),
    (
        "pretrain_epochs_zero",
        ["--method=hydra", "--sparsity=0.9", "--pretrain_epochs=0"],
        None,
        "--pretrain_epochs=0: must be a positive integer",
    ),
    (
        "nfgsm_multi_step",
        ["--objective=pgd", "--perturbation=nfgsm"],
        None,
        "--perturbation=nfgsm: only for the single-step",
    ),
    ("objective_choice", ["--objective=madry"], None, "--objective=madry: allowed values are sre, fgsm"),
    ("arch_choice", ["--arch=resnet9"], None, "--arch=resnet9: allowed values are vgg16"),
    ("float_syntax", ["--epsilon=abc"], None, "--epsilon=abc"),
    ("unknown_flag", ["--no_such_flag=1"], None, "no_such_flag"),
    ("positional_argument", ["positional"], None, "unexpected argument(s) positional"),
    ("lr_nan", ["--lr=nan"], None, "--lr=nan: must be a finite number"),
    ("sre_lambda_inf", ["--sre_lambda=inf"], None, "--sre_lambda=inf: must be a finite number"),
    (
        "prune_after_training",
        ["--epochs=10", "--prune_epoch=10"],
        None,
        "--prune_epoch=10: must lie in [0, --epochs=10)",
    ),
    (
        "gradual_end_before_start",
        ["--epochs=10", "--prune_epoch=5", "--prune_schedule=gradual", "--prune_end_epoch=3"],
        None,
        "--prune_end_epoch=3: must lie in (5, 10]",
    ),
    ("end_epoch_without_gradual", ["--prune_end_epoch=2"], None, "--prune_end_epoch=2: only with --prune_schedule"),
    ("eval_attack_unknown", ["--eval_attacks=pgd,cw"], None, "--eval_attacks=pgd,cw: a comma-separated subset"),
    ("export_unknown", ["--export=keras,onnx"], None, "--export=keras,onnx: a comma-separated subset"),
    ("val_size", ["--val_size=1.5"], None, "--val_size=1.5: a fraction in [0, 1)"),
    ("verbose_choice", ["--verbose=3"], None, "--verbose=3: allowed values are -1, 0, 1, 2"),
    ("seed_negative", ["--seed=-1"], None, "--seed=-1: must be >= 0"),
    ("width_zero", ["--width=0"], None, "--width=0.0: must be a positive number"),
    ("batch_negative", ["--batch_size=-5"], None, "--batch_size=-5: must be a positive integer"),
    ("eval_pgd_steps_zero", ["--eval_pgd_steps=0"], None, "--eval_pgd_steps=0: must be a positive integer"),
    ("missing_flagfile", ["--flagfile={tmp}/none.cfg"], None, "Unable to open flagfile"),
    ("svhn_extra_on_digits", ["--svhn_extra"], None, "--svhn_extra applies only to --dataset=svhn"),
    ("evaluate_without_model", ["--mode=evaluate"], None, "--model='': --mode=evaluate needs --model=PATH"),
    (
        "gradient_attack_on_tflite",
        ["--mode=evaluate", "--model=m.tflite", "--eval_attacks=clean,pgd"],
        None,
        "--eval_attacks=clean,pgd: pgd need gradients",
    ),
    (
        "transfer_from_tflite",
        [*EVALUATE, "--model={tmp}/bad.tflite", "--transfer_from={tmp}/bad.tflite"],
        _files,
        "must be a float model (.keras or SavedModel)",
    ),
    ("model_in_train_mode", ["--model={models}/input32.keras"], None, "input32.keras: only with --mode=evaluate"),
    ("transfer_in_train_mode", ["--transfer_from={models}/input32.keras"], None, "only with --mode=evaluate"),
    # -- the work directory (before TensorFlow)
    ("workdir_is_a_file", [], _a_file, "exists and is not a directory"),
    ("workdir_under_a_file", ["--workdir={tmp}/afile/run"], _files, "cannot be created: "),
    ("workdir_made_with_other_flags", [], _made_with_other_flags, "other settings (--epochs=3 -> 2)"),
    ("workdir_config_unreadable", [], _garbage_config, "config.json is unreadable"),
    ("workdir_results_unreadable", [], _garbage_results, "results.json is unreadable"),
    ("workdir_outputs_without_config", [], _outputs_without_config, "holds checkpoint but no config.json"),
    # -- data that is not there (before TensorFlow)
    ("dataset_unknown", ["--dataset=imagenet"], None, "--dataset=imagenet: unknown dataset"),
    ("npz_missing", ["--dataset=npz:{tmp}/none.npz"], None, "none.npz: no such file"),
    ("folder_missing", ["--dataset=folder:{tmp}/none"], None, "/none: not a directory"),
    ("tfds_not_prepared", ["--dataset=cifar10", "--data_dir={tmp}/empty_tfds"], _files, "--data_dir"),
    # -- model files, by path and signature (before TensorFlow)
    (
        "model_missing",
        [*EVALUATE, "--model={tmp}/none.keras"],
        None,
        "--model={tmp}/none.keras: no such file or directory",
    ),
    ("model_not_a_zip", [*EVALUATE, "--model={tmp}/bad.keras"], _files, "bad.keras: not a Keras model archive"),
    ("tflite_garbage", [*EVALUATE, "--model={tmp}/bad.tflite"], _files, "bad.tflite: not a TFLite model"),
    ("model_wrong_kind", [*EVALUATE, "--model={tmp}/model.h5"], _files, "model.h5: expected a .keras file"),
    ("dir_not_savedmodel", [*EVALUATE, "--model={tmp}/not_a_savedmodel"], _files, "not a SavedModel"),
    # -- found once TensorFlow runs: data contents, models probed with the data, checkpoints. One
    # case per kind of error raised after start-up (the start-up lines of TensorFlow's C++ runtime
    # are on stderr too); the other models that load but do not fit are checked in process below.
    (
        "npz_nan_pixels",
        ["--dataset=npz:{tmp}/data.npz"],
        _npz(
            x_train=np.full((40, 4, 4), np.nan, np.float32),
            y_train=np.arange(40) % 2,
            x_test=np.zeros((4, 4, 4), np.float32),
            y_test=np.zeros(4, int),
        ),
        "pixel values are NaN or infinite",
    ),
    ("arch_too_deep_for_images", ["--arch=vgg16"], None, "--arch=vgg16: cannot be built for the 8x8x1 images"),
    ("model_wrong_input", [*EVALUATE, "--model={models}/input32.keras"], None, "shape (batch, 8, 8, 1)"),
    ("checkpoint_damaged", [], _damaged_checkpoint, "checkpoint/epoch-00001/variables.npz is damaged"),
]


# Caught before TensorFlow starts: nothing else is printed, the error line is all of stderr.
BEFORE_TENSORFLOW = {case[0] for case in CASES[: [case[0] for case in CASES].index("npz_nan_pixels")]}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Small Keras models that load fine but do not fit the digits task."""
    import keras

    directory = tmp_path_factory.mktemp("models")

    def save(name, input_shape, make_output):
        inputs = keras.Input(input_shape)
        keras.Model(inputs, make_output(inputs)).save(directory / name)

    save("input32.keras", (32, 32, 3), lambda x: keras.layers.Dense(10)(keras.layers.Flatten()(x)))
    save("feature_map.keras", (8, 8, 1), lambda x: keras.layers.Conv2D(2, 3, padding="same")(x))
    save("three_classes.keras", (8, 8, 1), lambda x: keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    save("digits.keras", (8, 8, 1), lambda x: keras.layers.Dense(10)(keras.layers.Flatten()(x)))
    broken = keras.models.load_model(directory / "digits.keras")
    broken.layers[-1].kernel.assign(np.full(broken.layers[-1].kernel.shape, np.nan, np.float32))
    broken.save(directory / "nan_outputs.keras")
    return directory


def _snapshot(path):
    """Everything under `path` with size and modification time; None if it does not exist."""
    if not os.path.lexists(path):
        return None
    if not os.path.isdir(path):
        return os.stat(path).st_size, os.stat(path).st_mtime_ns
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = (os.path.isdir(full), os.stat(full).st_size, os.stat(full).st_mtime_ns)
    return out


def test_there_are_at_least_25_distinct_cases():
    assert len({case[0] for case in CASES}) == len(CASES) >= 25


@pytest.mark.parametrize("name,flags,setup,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_exit_2_and_leaves_no_trace(name, flags, setup, expected, models, tmp_path):
    workdir = tmp_path / "workdir"
    if setup is not None:
        setup(str(tmp_path), workdir)
    subs = {"tmp": str(tmp_path), "models": str(models), "workdir": str(workdir)}
    args = [*BASE, f"--workdir={workdir}", *(f.format(**subs) for f in flags)]
    before = _snapshot(workdir)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("FREP_TF_TEST_KILL_AT", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "main.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1, proc.stderr
    assert expected.format(**subs) in errors[0], errors[0]
    if name in BEFORE_TENSORFLOW:
        assert [line for line in proc.stderr.splitlines() if line.strip()] == errors, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert _snapshot(workdir) == before, "the workdir was changed"


def test_model_files_are_checked_before_tensorflow_starts(tmp_path):
    """A wrong model path costs a second: the cheap checks need neither TensorFlow nor Keras."""
    from frep_tf.model_io import ModelFileError, check_model_path

    keras_file = tmp_path / "m.keras"
    with zipfile.ZipFile(keras_file, "w") as archive:
        archive.writestr("config.json", "{}")
    check_model_path(str(keras_file))  # a zip archive: loading decides the rest
    with pytest.raises(ModelFileError, match="--transfer_from=.*no such file"):
        check_model_path(str(tmp_path / "none.keras"), flag="transfer_from")
    code = (
        "import sys; from frep_tf import run, resume, model_io, workdir; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "name,message",
    [
        ("feature_map.keras", "returns shape (8, 8, 2) per image, not (num_classes,): not a classifier"),
        ("three_classes.keras", "outputs 3 classes, the dataset has 10"),
        ("input32.keras", "does not accept float32 inputs of shape (batch, 8, 8, 1)"),
        ("nan_outputs.keras", "returns non-finite or non-float outputs"),
    ],
)
def test_models_that_load_but_do_not_fit_the_task(models, name, message):
    from frep_tf.model_io import ModelFileError, load_classifier

    with pytest.raises(ModelFileError) as info:
        load_classifier(str(models / name), input_shape=(8, 8, 1), num_classes=10)
    assert message in str(info.value) and "\n" not in str(info.value)
    model_fn = load_classifier(str(models / "digits.keras"), input_shape=(8, 8, 1), num_classes=10)
    assert np.asarray(model_fn(np.zeros((3, 8, 8, 1), np.float32))).shape == (3, 10)
