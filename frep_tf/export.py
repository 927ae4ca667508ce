"""Export a fused (standard-layer) model as .keras, SavedModel and TFLite (docs/deployment.md).

Every file is written under a temporary name, reloaded with its own runtime (Keras,
`tf.saved_model.load`, the LiteRT interpreter), compared with the Keras outputs, and only then renamed
into place: a file that is present was checked, and a kill never leaves a half-written one.

This module is callable: `frep_tf.export(model, directory)` is `export(...)`, the library's entry point,
which takes a RobustModel (its temporal ensemble is exported, else its fused network), a reparameterized
model (fused first) or any standard Keras model (frep_tf.api.callable_module).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time

import numpy as np

from frep_tf.api.callable_module import make_callable

FORMATS = ("keras", "saved_model", "tflite", "tflite_sparse", "tflite_int8", "tflite_int8_dense", "compact")
DEFAULT_FORMATS = ("keras", "saved_model", "tflite", "tflite_sparse")
FILENAMES = {
    "keras": "model.keras",
    "saved_model": "saved_model",
    "tflite": "model.tflite",
    "tflite_sparse": "model_sparse.tflite",
    "tflite_int8": "model_int8_sparse.tflite",
    "tflite_int8_dense": "model_int8.tflite",
    # `compact` (structured pruning with the removed channels taken out, frep_tf.compact) writes these:
    "compact_keras": "model_compact.keras",
    "compact_saved_model": "saved_model_compact",
    "compact_tflite": "model_compact.tflite",
    "compact_tflite_int8": "model_compact_int8.tflite",
}
# What `compact` expands to: (record format, the plain format it is written as).
COMPACT_FORMATS = (
    ("compact_keras", "keras"),
    ("compact_saved_model", "saved_model"),
    ("compact_tflite", "tflite"),
    ("compact_tflite_int8", "tflite_int8_dense"),
)
TFLITE_FORMATS = (
    "tflite",
    "tflite_sparse",
    "tflite_int8",
    "tflite_int8_dense",
    "compact_tflite",
    "compact_tflite_int8",
)


class ExportError(RuntimeError):
    """An exported file did not reproduce the Keras model."""


@dataclasses.dataclass(frozen=True)
class ExportRecord:
    format: str
    path: str
    bytes: int
    max_abs_diff: float  # vs the Keras outputs on the check inputs (int8: max |logit| diff)
    seconds: float
    agreement: float | None = None  # int8: share of check inputs with the Keras model's top-1 class


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


def export_model(
    model,
    export_dir: str,
    *,
    formats=DEFAULT_FORMATS,
    check_inputs: np.ndarray,
    representative: np.ndarray | None = None,
    atol: float = 1e-4,
    int8_min_agreement: float = 0.9,
    compact_report: dict | None = None,
) -> list[ExportRecord]:
    """Write `model` (a fused, standard-layer Keras model) in `formats` into `export_dir`.

    `check_inputs` is a batch of real or random inputs in [0, 1]. Float exports must match the Keras
    logits to `atol` relative to the logit scale (max(1, max|logit|)); int8 exports must agree on the
    top-1 class for `int8_min_agreement` of the inputs. int8 exports are calibrated on
    `representative` (training images; `check_inputs` when None). `compact` writes the model with its
    structurally pruned channels removed (frep_tf.compact) as .keras, SavedModel, float and int8
    TFLite, each checked against the uncompacted Keras model; its parameter and MAC counts go into
    `compact_report` when a dict is given. A failed check raises ExportError and leaves no file under
    the final name.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"Unknown export format(s) {unknown}. Allowed: {', '.join(FORMATS)}")
    os.makedirs(export_dir, exist_ok=True)
    x = np.asarray(check_inputs, np.float32)
    calibration = x if representative is None else np.asarray(representative, np.float32)
    reference = np.asarray(model(x, training=False))
    plain = [(f, f) for f in formats if f != "compact"]
    records = _write(model, export_dir, plain, x, reference, calibration, atol, int8_min_agreement)
    if "compact" in formats:
        from frep_tf.compact import compact

        small, report = compact(model)
        if compact_report is not None:
            compact_report.update(report.as_dict())
        records += _write(small, export_dir, COMPACT_FORMATS, x, reference, calibration, atol, int8_min_agreement)
    return records


def export(
    model,
    export_dir: str,
    *,
    formats=DEFAULT_FORMATS,
    check_inputs: np.ndarray | None = None,
    representative: np.ndarray | None = None,
    **options,
) -> list[ExportRecord]:
    """Write the deployable form of `model` (see `deployable`) in `formats` into `export_dir`.

    `check_inputs` (default: 16 seeded uniform random inputs in [0, 1] of the model's input shape) are
    what every file is checked on; int8 formats are calibrated on `representative` (give real training
    inputs for those). Other keyword arguments (atol, int8_min_agreement, compact_report) are
    export_model's. Returns one ExportRecord per file written (format, path, bytes, ...).
    """
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    final = deployable(model)
    x = _default_check_inputs(final) if check_inputs is None else check_inputs
    if "compact" in formats:
        _check_compactable(final)
    return export_model(final, export_dir, formats=formats, check_inputs=x, representative=representative, **options)


def deployable(model):
    """What gets exported: a RobustModel's temporal ensemble (or its fused network when it has none), a
    reparameterized model fused (frep_tf.fuse), a standard model as it is."""
    import keras

    from frep_tf.fuse import fuse
    from frep_tf.layers.reparam import reparam_layers

    if not isinstance(model, keras.Model):
        raise TypeError(f"export: expected a keras.Model or a RobustModel, got {type(model).__name__}")
    if hasattr(model, "network") and hasattr(model, "ensemble"):
        return model.ensemble if model.ensemble is not None else fuse(model.network)
    return fuse(model) if reparam_layers(model) else model


def _default_check_inputs(model, count: int = 16) -> np.ndarray:
    shape = tuple(model.inputs[0].shape[1:]) if len(model.inputs) == 1 else None
    if shape is None or any(d is None for d in shape):
        raise ValueError(
            f"export: cannot make check inputs for a model with inputs {[t.shape for t in model.inputs]}; "
            "pass check_inputs= (a batch of inputs in [0, 1])"
        )
    return np.random.default_rng(0).random((count, *shape), dtype=np.float32)


def _check_compactable(model) -> None:
    """`compact` slices the kernels of Conv2D / Dense and the BatchNorms between them, and follows channels
    through Concatenate and Flatten (frep_tf.compact): say which layer stops it."""
    import keras

    from frep_tf.compact import unfollowed_layer

    sliceable = (keras.layers.Conv2D, keras.layers.Dense, keras.layers.BatchNormalization, keras.layers.Normalization)
    for layer in model.layers:
        if layer.weights and (not isinstance(layer, sliceable) or getattr(layer, "groups", 1) != 1):
            raise ValueError(
                f"export: format 'compact' cannot remove channels around layer {layer.name!r} "
                f"({type(layer).__name__}); export the other formats"
            )
    problem = unfollowed_layer(model)
    if problem:
        raise ValueError(f"export: format 'compact' cannot follow {problem}; export the other formats")


def _write(model, export_dir, formats, x, reference, calibration, atol, int8_min_agreement) -> list[ExportRecord]:
    """Write `model` as each (record format, plain format) pair and check it against `reference`."""
    import keras
    import tensorflow as tf

    from frep_tf import tflite

    tol = atol * max(1.0, float(np.abs(reference).max()))
    records = []
    work = tempfile.mkdtemp(prefix=".export-", dir=export_dir)
    try:
        # The SavedModel is the source of every TFLite conversion, so it is written first.
        sm_tmp = os.path.join(work, "saved_model")
        if any(kind == "saved_model" or kind in tflite.KINDS for _, kind in formats):
            t = time.perf_counter()
            model.export(sm_tmp, format="tf_saved_model", verbose=False)
            sm_seconds = time.perf_counter() - t
        for fmt, kind in formats:
            t = time.perf_counter()
            final = os.path.join(export_dir, FILENAMES[fmt])
            agreement = None
            if kind == "keras":
                tmp = os.path.join(work, FILENAMES[fmt])
                model.save(tmp)
                got = np.asarray(keras.models.load_model(tmp, compile=False)(x, training=False))
            elif kind == "saved_model":
                tmp = sm_tmp
                loaded = tf.saved_model.load(tmp)  # keep a reference: its variables die with it
                got = np.asarray(loaded.serve(tf.constant(x)))
            else:
                tmp = os.path.join(work, FILENAMES[fmt])
                with open(tmp, "wb") as fh:
                    fh.write(tflite.convert(sm_tmp, kind, calibration))
                got = tflite.predict(tmp, x)
            diff = float(np.abs(got - reference).max())
            if kind in tflite.INT8_KINDS:
                agreement = float(np.mean(got.argmax(-1) == reference.argmax(-1)))
                if agreement < int8_min_agreement:
                    raise ExportError(
                        f"{FILENAMES[fmt]}: int8 model agrees with Keras on {agreement:.1%} of top-1 "
                        f"predictions (< {int8_min_agreement:.0%})"
                    )
            elif not diff <= tol:
                raise ExportError(f"{FILENAMES[fmt]}: outputs differ from Keras by {diff:.3g} (> {tol:.3g})")
            seconds = time.perf_counter() - t + (sm_seconds if kind == "saved_model" else 0.0)
            size = _size(tmp)
            if kind == "saved_model":
                # Keep a copy in the scratch dir for the TFLite conversions that follow.
                shutil.copytree(sm_tmp, tmp + ".final")
                tmp = tmp + ".final"
            _replace(tmp, final)
            records.append(ExportRecord(fmt, final, size, diff, seconds, agreement))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return records


make_callable(__name__, "export")
