"""Exports are written, reloaded by their own runtime and compared with Keras before they count."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from frep_tf.export import DEFAULT_FORMATS, FILENAMES, ExportError, export_model
from frep_tf.fuse import fuse
from frep_tf.layers import reparam_layers
from frep_tf.models import build_model
from frep_tf.tflite import predict as tflite_predict


def _masked(arch, shape, keep, parameterization="plain", width=1.0):
    # Seeded: with 8 check images one int8 top-1 flip is the difference between 87.5 % and 100 %.
    keras.utils.set_random_seed(0)
    model = build_model(arch, input_shape=shape, parameterization=parameterization, width=width)
    rng = np.random.default_rng(0)
    for layer in reparam_layers(model):
        layer.mask.assign((rng.random(layer.mask.shape) < keep).astype("float32"))
        if parameterization == "plain":  # keep activations at their scale, so comparisons mean something
            layer.kernel.assign(layer.kernel / np.sqrt(keep))
    return fuse(model)


def test_every_format_reloads_and_matches(tmp_path):
    fused = _masked("small_cnn", (8, 8, 1), keep=0.5, parameterization="hadamard")
    x = np.random.default_rng(1).random((8, 8, 8, 1)).astype("float32")
    records = export_model(fused, str(tmp_path), formats=(*DEFAULT_FORMATS, "tflite_int8"), check_inputs=x)
    assert [r.format for r in records] == [*DEFAULT_FORMATS, "tflite_int8"]
    assert sorted(os.listdir(tmp_path)) == sorted(FILENAMES[f] for f in (*DEFAULT_FORMATS, "tflite_int8"))
    ref = fused(x).numpy()
    # Independent reloads, not through export_model's own check.
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "model.keras")(x).numpy(), ref, atol=1e-5)
    saved = tf.saved_model.load(str(tmp_path / "saved_model"))
    np.testing.assert_allclose(saved.serve(x).numpy(), ref, atol=1e-5)
    for name in ("model.tflite", "model_sparse.tflite"):
        np.testing.assert_allclose(tflite_predict(str(tmp_path / name), x), ref, atol=1e-4)
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert all(layer.__class__.__module__.startswith("keras.") for layer in loaded.layers)


def test_resnet18_99_percent_sparse_tflite_is_ten_times_smaller(tmp_path):
    fused = _masked("resnet18", (32, 32, 3), keep=0.01)
    x = np.random.default_rng(2).random((4, 32, 32, 3)).astype("float32")
    records = {
        r.format: r for r in export_model(fused, str(tmp_path), formats=("tflite", "tflite_sparse"), check_inputs=x)
    }
    dense, sparse = records["tflite"], records["tflite_sparse"]
    assert sparse.bytes * 10 <= dense.bytes, (sparse.bytes, dense.bytes)
    ref = fused(x).numpy()
    assert np.abs(ref).max() > 1e-2
    for r in (dense, sparse):
        assert r.max_abs_diff <= 1e-4
        assert np.abs(tflite_predict(r.path, x) - ref).max() <= 1e-4


def test_failed_check_leaves_nothing_behind(tmp_path):
    fused = _masked("small_cnn", (8, 8, 1), keep=1.0)
    x = np.random.default_rng(3).random((4, 8, 8, 1)).astype("float32")
    # An absurd tolerance makes the first check fail: nothing may appear under a final name.
    with pytest.raises(ExportError, match="model.keras"):
        export_model(fused, str(tmp_path), formats=("keras",), check_inputs=x, atol=-1.0)
    assert os.listdir(tmp_path) == []


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown export format.*onnx.*Allowed: keras"):
        export_model(None, str(tmp_path), formats=("onnx",), check_inputs=np.zeros((1, 8, 8, 1)))
