"""Export a fused (standard-layer) model as .keras, SavedModel and TFLite (DESIGN §6).

Every file is written under a temporary name, reloaded with its own runtime (Keras,
`tf.saved_model.load`, the LiteRT interpreter), compared with the Keras outputs, and only then renamed
into place: a file that is present was checked, and a kill never leaves a half-written one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time

import numpy as np

FORMATS = ("keras", "saved_model", "tflite", "tflite_sparse", "tflite_int8")
DEFAULT_FORMATS = ("keras", "saved_model", "tflite", "tflite_sparse")
FILENAMES = {
    "keras": "model.keras",
    "saved_model": "saved_model",
    "tflite": "model.tflite",
    "tflite_sparse": "model_sparse.tflite",
    "tflite_int8": "model_int8_sparse.tflite",
}


class ExportError(RuntimeError):
    """An exported file did not reproduce the Keras model."""


@dataclasses.dataclass(frozen=True)
class ExportRecord:
    format: str
    path: str
    bytes: int
    max_abs_diff: float  # vs the Keras outputs on the check inputs (int8: max |logit| diff)
    seconds: float


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def _replace(tmp: str, final: str) -> None:
    if os.path.isdir(final):
        shutil.rmtree(final)
    elif os.path.exists(final):
        os.remove(final)
    os.replace(tmp, final)


def tflite_predict(path_or_bytes, x: np.ndarray) -> np.ndarray:
    """Run a TFLite model on a batch with the LiteRT interpreter (int8 I/O handled)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"model_path": path_or_bytes} if isinstance(path_or_bytes, str) else {"model_content": path_or_bytes}
    # Sparse int8 kernels need the builtin resolver without the default (XNNPACK) delegate.
    interpreter = Interpreter(**kwargs, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    xin = x
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        xin = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
    interpreter.set_tensor(inp["index"], xin)
    interpreter.invoke()
    y = interpreter.get_tensor(out["index"])
    if out["dtype"] != np.float32:
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y


def _convert_tflite(saved_model_dir: str, kind: str, representative: np.ndarray | None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    if kind == "tflite_sparse":
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    elif kind == "tflite_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]

        def samples():
            for i in range(min(len(representative), 100)):
                yield [representative[i : i + 1].astype(np.float32)]

        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def export_model(
    model,
    export_dir: str,
    *,
    formats=DEFAULT_FORMATS,
    check_inputs: np.ndarray,
    atol: float = 1e-4,
    int8_min_agreement: float = 0.9,
) -> list[ExportRecord]:
    """Write `model` (a fused, standard-layer Keras model) in `formats` into `export_dir`.

    `check_inputs` is a batch of real or random inputs in [0, 1]. Float exports must match the Keras
    logits to `atol` relative to the logit scale (max(1, max|logit|)); the int8 export must agree
    on the top-1 class for `int8_min_agreement` of the inputs. A failed check raises ExportError and
    leaves no file under the final name.
    """
    import keras
    import tensorflow as tf

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"Unknown export format(s) {unknown}. Allowed: {', '.join(FORMATS)}")
    os.makedirs(export_dir, exist_ok=True)
    x = np.asarray(check_inputs, np.float32)
    reference = np.asarray(model(x, training=False))
    tol = atol * max(1.0, float(np.abs(reference).max()))
    records = []
    work = tempfile.mkdtemp(prefix=".export-", dir=export_dir)
    try:
        # The SavedModel is the source of every TFLite conversion, so it is written first.
        sm_tmp = os.path.join(work, "saved_model")
        if any(f.startswith("saved_model") or f.startswith("tflite") for f in formats):
            t = time.perf_counter()
            model.export(sm_tmp, format="tf_saved_model", verbose=False)
            sm_seconds = time.perf_counter() - t
        for fmt in formats:
            t = time.perf_counter()
            final = os.path.join(export_dir, FILENAMES[fmt])
            if fmt == "keras":
                tmp = os.path.join(work, FILENAMES[fmt])
                model.save(tmp)
                got = np.asarray(keras.models.load_model(tmp, compile=False)(x, training=False))
            elif fmt == "saved_model":
                tmp = sm_tmp
                loaded = tf.saved_model.load(tmp)  # keep a reference: its variables die with it
                got = np.asarray(loaded.serve(tf.constant(x)))
            else:
                tmp = os.path.join(work, FILENAMES[fmt])
                with open(tmp, "wb") as fh:
                    fh.write(_convert_tflite(sm_tmp, fmt, x))
                got = tflite_predict(tmp, x)
            diff = float(np.abs(got - reference).max())
            if fmt == "tflite_int8":
                agreement = float(np.mean(got.argmax(-1) == reference.argmax(-1)))
                if agreement < int8_min_agreement:
                    raise ExportError(
                        f"{FILENAMES[fmt]}: int8 model agrees with Keras on {agreement:.1%} of top-1 "
                        f"predictions (< {int8_min_agreement:.0%})"
                    )
            elif not diff <= tol:
                raise ExportError(f"{FILENAMES[fmt]}: outputs differ from Keras by {diff:.3g} (> {tol:.3g})")
            seconds = time.perf_counter() - t + (sm_seconds if fmt == "saved_model" else 0.0)
            size = _size(tmp)
            if fmt == "saved_model":
                # Keep a copy in the scratch dir for the TFLite conversions that follow.
                shutil.copytree(sm_tmp, tmp + ".final")
                tmp = tmp + ".final"
            _replace(tmp, final)
            records.append(ExportRecord(fmt, final, size, diff, seconds))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return records
