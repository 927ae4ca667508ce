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
