"""Load any saved classifier (a .keras file or a SavedModel directory) as a callable for evaluation."""

from __future__ import annotations

import os
import zipfile

import numpy as np


class ModelFileError(ValueError):
    """A model path that does not hold a usable classifier; the message is one line."""


def check_model_path(path: str, *, flag: str = "model") -> None:
    """TensorFlow-free checks of a model path: it exists, is of a kind we load, and starts like one.

    Run before TensorFlow starts, so a wrong path costs a second; `load_classifier` repeats them.
    """
    if not path or not os.path.exists(path):
        raise ModelFileError(f"--{flag}={path}: no such file or directory")
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise ModelFileError(f"--{flag}={path}: a directory, but not a SavedModel (no saved_model.pb)")
        return
    if path.endswith(".tflite"):
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head[4:8] != b"TFL3":  # the flatbuffer file identifier of every TFLite model
            raise ModelFileError(f"--{flag}={path}: not a TFLite model (no TFL3 flatbuffer identifier)")
    elif path.endswith(".keras"):
        if not zipfile.is_zipfile(path):
            raise ModelFileError(f"--{flag}={path}: not a Keras model archive (a .keras file is a zip archive)")
    else:
        raise ModelFileError(f"--{flag}={path}: expected a .keras file, a SavedModel directory or a .tflite file")


def load_classifier(path: str, *, input_shape=None, num_classes: int | None = None, flag: str = "model"):
    """Returns `model_fn(x) -> logits` for a .keras file, SavedModel directory or .tflite file.

    When `input_shape` (H, W, C) and `num_classes` are given, the model is probed once with a zero
    batch so a mismatch is reported here, clearly, instead of deep inside an attack.
    """
    check_model_path(path, flag=flag)
    import tensorflow as tf

    if os.path.isdir(path):
        try:
            loaded = tf.saved_model.load(path)
        except Exception as exc:  # corrupt protobufs, missing variables, ...
            raise ModelFileError(f"--{flag}={path}: cannot load the SavedModel ({_reason(exc)})") from exc
        fn = getattr(loaded, "serve", None)
        if fn is None:
            signatures = getattr(loaded, "signatures", {})
            if "serving_default" not in signatures:
                raise ModelFileError(f"--{flag}={path}: the SavedModel has no `serve` or serving_default endpoint")
            signature = signatures["serving_default"]

            def fn(x, _sig=signature):
                out = _sig(x)
                return next(iter(out.values())) if isinstance(out, dict) else out

        def model_fn(x, _fn=fn, _keep=loaded):  # `_keep` holds the variables alive
            return _fn(x)

    elif path.endswith(".tflite"):
        from frep_tf.tflite import tflite_model_fn

        try:
            model_fn = tflite_model_fn(path)
        except Exception as exc:
            raise ModelFileError(f"--{flag}={path}: cannot load the TFLite file ({_reason(exc)})") from exc
    else:  # .keras, as check_model_path made sure
        import keras

        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as exc:
            raise ModelFileError(f"--{flag}={path}: cannot load the Keras file ({_reason(exc)})") from exc

        def model_fn(x, _model=model):
            return _model(x, training=False)

    if input_shape is not None:
        probe = np.zeros((2, *input_shape), np.float32)
        shape = f"(batch, {', '.join(map(str, input_shape))})"
        try:
            out = np.asarray(model_fn(tf.constant(probe)))
        except Exception as exc:
            raise ModelFileError(
                f"--{flag}={path}: does not accept float32 inputs of shape {shape}, the dataset's images "
                f"({_reason(exc)})"
            ) from exc
        if out.ndim != 2 or out.shape[0] != 2:
            raise ModelFileError(
                f"--{flag}={path}: returns shape {out.shape[1:]} per image, not (num_classes,): not a classifier"
            )
        if num_classes is not None and out.shape[1] != num_classes:
            raise ModelFileError(f"--{flag}={path}: outputs {out.shape[1]} classes, the dataset has {num_classes}")
        if not np.issubdtype(out.dtype, np.floating) or not np.all(np.isfinite(out)):
            raise ModelFileError(
                f"--{flag}={path}: returns non-finite or non-float outputs ({out.dtype}) for a blank image; "
                "expected logits"
            )
    return model_fn


def _reason(exc: Exception) -> str:
    """The exception's type and the first line of its message, short enough for a one-line error."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__
