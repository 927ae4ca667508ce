"""TFLite files: conversion from a SavedModel, and the one LiteRT interpreter wrapper (docs/deployment.md).

`TFLiteModel` runs a .tflite file as a model callable (float32 [0, 1] images in, float32 logits out,
int8 I/O quantised with the file's own parameters). The export checks, the evaluation, `--mode=predict`
and benchmarks/tflite_latency.py all run files through it.
"""

from __future__ import annotations

import threading

import numpy as np

# Conversion kinds: the export format names of frep_tf.export that are TFLite files.
KINDS = ("tflite", "tflite_sparse", "tflite_int8", "tflite_int8_dense")
INT8_KINDS = ("tflite_int8", "tflite_int8_dense")


def convert(saved_model_dir: str, kind: str, representative: np.ndarray | None = None) -> bytes:
    """The TFLite flatbuffer of a SavedModel: float (`tflite`), float with the sparse weight encoding
    (`tflite_sparse`), full-integer int8 with (`tflite_int8`) or without (`tflite_int8_dense`) it.

    int8 kinds calibrate on every image of `representative` (one at a time, as the converter asks).
    """
    import tensorflow as tf

    if kind not in KINDS:
        raise ValueError(f"Unknown TFLite kind {kind!r}. Allowed: {', '.join(KINDS)}")
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    if kind == "tflite_sparse":
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    elif kind in INT8_KINDS:
        if representative is None or len(representative) == 0:
            raise ValueError(f"{kind}: int8 conversion needs a non-empty representative dataset")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if kind == "tflite_int8":
            converter.optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
        images = np.asarray(representative, np.float32)

        def samples():
            for i in range(len(images)):
                yield [images[i : i + 1]]

        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def predict(path, x, **kwargs) -> np.ndarray:
    """Logits of the .tflite file at `path` on the numpy batch `x`."""
    return TFLiteModel(path, **kwargs).predict_numpy(x)


class TFLiteModel:
    """A LiteRT interpreter as a model callable: float32 [0, 1] inputs in, float32 logits out.

    Quantized (int8/uint8) inputs and outputs are (de)quantized with the model's own
    parameters; the batch dimension is resized to each call's batch (or, for models that cannot
    be resized, run in slices of their fixed batch). It has no gradients (`differentiable` is
    False); inside tf.function it runs through tf.numpy_function. The XNNPACK delegate is off
    by default because sparse int8 kernels need the plain builtin resolver.
    """

    differentiable = False

    def __init__(self, path, *, num_threads=None, xnnpack=False):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.path = str(path)
        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self._interpreter = Interpreter(
            model_path=self.path, num_threads=num_threads, experimental_op_resolver_type=resolver
        )
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._base_shape = tuple(int(d) for d in self._input["shape"])
        self._batch = self._base_shape[0]
        self._resizable = True
        # Interpreter calls are not thread-safe, and TF may run independent ops in parallel.
        self._lock = threading.Lock()
        self.num_classes = int(self._output["shape"][-1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(H, W, C) of one image, as the file states it."""
        return self._base_shape[1:]

    def __repr__(self):
        return f"TFLiteModel({self.path!r})"

    def _quantize(self, x):
        dtype = self._input["dtype"]
        scale, zero_point = self._input["quantization"]
        if np.issubdtype(dtype, np.integer) and scale > 0:
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)
        return x.astype(dtype)

    def _dequantize(self, out):
        scale, zero_point = self._output["quantization"]
        if np.issubdtype(out.dtype, np.integer) and scale > 0:
            return ((out.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return out.astype(np.float32)

    def _invoke(self, x):
        self._interpreter.set_tensor(self._input["index"], self._quantize(x))
        self._interpreter.invoke()
        return self._dequantize(self._interpreter.get_tensor(self._output["index"]))

    def _resize(self, batch):
        if batch == self._batch:
            return True
        if not self._resizable:
            return False
        try:
            self._interpreter.resize_tensor_input(self._input["index"], [batch, *self._base_shape[1:]])
            self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError):
            self._resizable = False
            self._interpreter.resize_tensor_input(self._input["index"], list(self._base_shape))
            self._interpreter.allocate_tensors()
            self._batch = self._base_shape[0]
            return False
        self._batch = batch
        return True

    def bind(self, x):
        """Set `x` (a numpy batch) as the input of the next `invoke` calls (for timing)."""
        x = np.asarray(x, np.float32)
        with self._lock:
            if not self._resize(len(x)):
                raise ValueError(f"{self!r} has a fixed batch of {self._batch}. Received: batch={len(x)}")
            self._interpreter.set_tensor(self._input["index"], self._quantize(x))

    def invoke(self):
        """One run of the interpreter on the bound input (see `bind`)."""
        self._interpreter.invoke()

    def predict_numpy(self, x):
        """Logits of a numpy batch."""
        x = np.asarray(x, np.float32)
        if tuple(x.shape[1:]) != self._base_shape[1:]:
            raise ValueError(f"{self!r} takes inputs of shape {self._base_shape[1:]}. Received: shape={x.shape}")
        if len(x) == 0:
            return np.zeros([0, self.num_classes], np.float32)
        with self._lock:
            if self._resize(len(x)):
                return self._invoke(x)
            # A fixed batch size: run slices of that size, padding the last one.
            step = self._batch
            outs = []
            for start in range(0, len(x), step):
                part = x[start : start + step]
                padded = np.concatenate([part, np.repeat(part[-1:], step - len(part), 0)])
                outs.append(self._invoke(padded)[: len(part)])
            return np.concatenate(outs)

    def __call__(self, x):
        import tensorflow as tf

        x = tf.convert_to_tensor(x, tf.float32)
        logits = tf.numpy_function(self.predict_numpy, [x], tf.float32)
        logits.set_shape([x.shape[0], self.num_classes])
        return logits


def tflite_model_fn(path, *, num_threads=None, xnnpack=False):
    """A model callable running the .tflite file at `path` with the LiteRT interpreter."""
    return TFLiteModel(path, num_threads=num_threads, xnnpack=xnnpack)
