"""Fixtures shared by several test files: a digits CNN for the attack, evaluation and independent-implementation
tests, and real `python main.py` runs whose outputs more than one file checks."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same Keras, NumPy and Python random state, so what it draws does not
    depend on which tests ran before it in the same worker (pytest-xdist deals tests out differently
    from run to run)."""
    keras.utils.set_random_seed(0)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits in [0, 1], split like frep_tf's `digits` dataset: x_train, x_test, y_train, y_test."""
    data = load_digits()
    images = (data.images / 16.0).astype("float32")[..., None]
    labels = data.target.astype("int32")
    split = train_test_split(images, labels, test_size=0.2, random_state=0, stratify=labels)
    assert split[1].shape == (360, 8, 8, 1)
    return split


@pytest.fixture(scope="session")
def train_digits_cnn(digits):
    """Trains a two-conv-layer digits CNN (seed 0): train_digits_cnn(filters, dropout, epochs) -> keras model."""

    def train(filters=(16, 32), dropout=0.0, epochs=5):
        x_train, _, y_train, _ = digits
        keras.utils.set_random_seed(0)
        layers = [keras.Input((8, 8, 1))]
        layers += [keras.layers.Conv2D(f, 3, padding="same", activation="relu") for f in filters]
        layers += [keras.layers.Flatten()] + ([keras.layers.Dropout(dropout)] if dropout else [])
        model = keras.Sequential([*layers, keras.layers.Dense(10)])
        model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
        return model

    return train


@pytest.fixture(scope="session")
def natural_cnn(digits, train_digits_cnn):
    """A naturally trained two-layer CNN (clean test accuracy > 90 %) as a model callable."""
    _, x_test, _, y_test = digits
    model = train_digits_cnn()

    def model_fn(x):
        return model(x, training=False)

    model_fn.keras_model = model
    assert np.mean(np.argmax(model_fn(x_test), -1) == y_test) > 0.9
    return model_fn


# -- runs of the real `python main.py` that several test files read ------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=900):
    """`python main.py ARGS` in a subprocess, no test kill point."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("FREP_TF_TEST_KILL_AT", None)
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


FREP_CH_EXPORTS = "keras,saved_model,tflite,tflite_sparse,tflite_int8,tflite_int8_dense,compact"


@pytest.fixture(scope="session")
def frep_ch_structured_run(tmp_path_factory):
    """One structured FReP-CH run (channel mixing, --structured, 70 % of the conv channels removed after the
    first of 3 epochs) that exports every format: read by test_deploy.py (exports, TFLite evaluation, predict) and by
    test_algorithm.py (whole channels removed, accuracy)."""
    workdir = tmp_path_factory.mktemp("frep_ch_structured")
    proc = _main(
        "--flagfile=configs/quickstart.cfg",
        f"--workdir={workdir}",
        "--parameterization=channel",
        "--structured",
        "--sparsity=0.7",
        "--epochs=3",  # pruned after 1, two epochs to recover (test_algorithm.py: clean accuracy > 0.3)
        "--prune_epoch=1",
        "--val_pgd_steps=1",
        "--eval_pgd_steps=3",
        "--eval_samples=60",
        "--tflite_square_queries=20",
        f"--export={FREP_CH_EXPORTS}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    """The quickstart shortened to 12 epochs (pruned to 99 % at epoch 6), every default export, each TFLite
    file evaluated (Square with 20 queries per image) -> (workdir, completed process). test_algorithm.py
    holds its robustness to the measured floors; test_main.py checks everything it writes."""
    workdir = tmp_path_factory.mktemp("quickstart")
    proc = _main(
        "--flagfile=configs/quickstart.cfg",
        "--epochs=12",
        "--prune_epoch=6",
        "--tflite_square_queries=20",
        f"--workdir={workdir}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir, proc


# -- scheduling over the two pytest-xdist workers (.ci/run: -n 2; --dist=loadgroup in pyproject.toml) -------

# Fixtures that start main.py or train and attack a model, each read by several tests. Every test that uses
# one of them goes to the same worker (one xdist group per fixture, merged when a test uses two), so each runs
# once per session instead of once on each worker that happens to get one of its tests.
SHARED_RUNS = frozenset(
    {
        "quickstart_run",
        "frep_ch_structured_run",
        "reference",  # test_resume.py
        "hydra_reference",
        "harp_reference",
        "run",  # test_export_is_ensemble.py
        "digits_half_width_99",
        "large_eps",
        "mid_eps",
    }
)


def _shared_runs(item) -> list[str]:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    return sorted(
        f"{defs[-1].baseid or '.'}::{name}"
        for name, defs in info.name2fixturedefs.items()
        if name in SHARED_RUNS and defs and defs[-1].scope in ("module", "session")
    )


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Tests sharing a costly fixture form one xdist group; tests marked `slow` start first. The groups are
    scheduled first (the largest first), then single tests in collection order: the long ones at the head
    of the queue keep both workers busy to the end instead of leaving one to finish a long test alone."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    shared = {id(item): _shared_runs(item) for item in items}
    for keys in shared.values():
        for key in keys[1:]:
            parent[find(key)] = find(keys[0])
    for item in items:
        if shared[id(item)]:
            item.add_marker(pytest.mark.xdist_group(find(shared[id(item)][0])))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: otherwise as collected
