"""Load any saved classifier (a .keras file or a SavedModel directory) as a callable for evaluation."""

from __future__ import annotations

import os

import numpy as np


class ModelFileError(ValueError):
    """A model path that does not hold a usable classifier; the message is one line."""


def load_classifier(path: str, *, input_shape=None, num_classes: int | None = None, flag: str = "model"):
    """Returns `model_fn(x) -> logits` for a .keras file, SavedModel directory or .tflite file.

    When `input_shape` (H, W, C) and `num_classes` are given, the model is probed once with a zero
    batch so a mismatch is reported here, clearly, instead of deep inside an attack.
    """
    import tensorflow as tf

    if not path or not os.path.exists(path):
        raise ModelFileError(f"--{flag}={path}: no such file or directory")
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise ModelFileError(f"--{flag}={path}: a directory, but not a SavedModel (no saved_model.pb)")
        try:
            loaded = tf.saved_model.load(path)
        except Exception as exc:  # corrupt protobufs, missing variables, ...
            raise ModelFileError(f"--{flag}={path}: cannot load the SavedModel ({type(exc).__name__})") from exc
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
        from frep_tf.evaluate import tflite_model_fn

        try:
            model_fn = tflite_model_fn(path)
        except Exception as exc:
            raise ModelFileError(f"--{flag}={path}: cannot load the TFLite file ({type(exc).__name__})") from exc
    elif path.endswith(".keras"):
        import keras

        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as exc:
            raise ModelFileError(f"--{flag}={path}: cannot load the Keras file ({type(exc).__name__})") from exc

        def model_fn(x, _model=model):
            return _model(x, training=False)

    else:
        raise ModelFileError(f"--{flag}={path}: expected a .keras file, a SavedModel directory or a .tflite file")
    if input_shape is not None:
        probe = np.zeros((2, *input_shape), np.float32)
        try:
            out = np.asarray(model_fn(tf.constant(probe)))
        except Exception as exc:
            raise ModelFileError(
                f"--{flag}={path}: does not accept inputs of shape (batch, {', '.join(map(str, input_shape))}) "
                f"({type(exc).__name__})"
            ) from exc
        if out.ndim != 2 or out.shape[0] != 2:
            raise ModelFileError(
                f"--{flag}={path}: output shape {out.shape[1:]} is not (num_classes,): not a classifier"
            )
        if num_classes is not None and out.shape[1] != num_classes:
            raise ModelFileError(f"--{flag}={path}: outputs {out.shape[1]} classes, the dataset has {num_classes}")
    return model_fn
