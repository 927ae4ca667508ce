"""Statistics of the deployed weights that a report plots (paper Fig. 7: the distribution of the fused
weights). Computed on the fused, exported model, so results.json carries them and a report never needs
the model files:

    results["weight_histogram"] = weight_histogram(final_model)
"""

from __future__ import annotations

import numpy as np

# Fixed bins over log10|w| so histograms of different runs add up and compare bin by bin: 1e-8 .. 10,
# 0.1 decade wide. Fused FReP kernels (products of two factors) reach far below a plain kernel's range.
LOG10_START, LOG10_STOP, LOG10_WIDTH = -8.0, 1.0, 0.1


def log10_edges() -> np.ndarray:
    n = round((LOG10_STOP - LOG10_START) / LOG10_WIDTH)
    return np.round(np.linspace(LOG10_START, LOG10_STOP, n + 1), 6)


def kernel_arrays(model) -> list[np.ndarray]:
    """The Conv2D / Dense kernels of a standard-layer (fused or exported) model, nested models included."""
    import keras

    kernels = []
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernels.append(np.asarray(layer.kernel))
        elif hasattr(layer, "layers"):
            kernels.extend(kernel_arrays(layer))
    return kernels


def histogram_of(kernels) -> dict:
    """The histogram of log10|w| over the non-zero entries of `kernels` (a list of arrays), with the
    exact zeros counted apart; `below` / `above` count non-zero weights outside the bins."""
    values = np.concatenate([np.ravel(np.asarray(k, np.float64)) for k in kernels]) if kernels else np.zeros(0)
    nonzero = np.abs(values[values != 0])
    logs = np.log10(nonzero)
    edges = log10_edges()
    counts, _ = np.histogram(logs, bins=edges)
    below = int(np.sum(logs < edges[0]))
    above = int(np.sum(logs > edges[-1]))
    return {
        "edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
        "below": below,
        "above": above,
        "zeros": int(values.size - nonzero.size),
        "total": int(values.size),
    }


def weight_histogram(model) -> dict:
    """`histogram_of` the Conv2D / Dense kernels of a fused (standard-layer) Keras model."""
    return histogram_of(kernel_arrays(model))


NEAR_ZERO_RELATIVE = 1e-3  # |w| <= 1e-3 * max|w| of its layer counts as near zero


def sparsity_measures(model, relative: float = NEAR_ZERO_RELATIVE) -> dict:
    """Exact and near-zero fractions of every Conv2D / Dense kernel of a standard-layer model and
    overall (near zero: |w| <= relative * max|w| of that layer; scale-free, so layers compare)."""
    import keras

    layers = {}

    def visit(m):
        for layer in m.layers:
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
                w = np.abs(np.asarray(layer.kernel, np.float64))
                top = float(w.max()) if w.size else 0.0
                layers[layer.name] = {
                    "total": int(w.size),
                    "zero": float(np.mean(w == 0)) if w.size else 0.0,
                    "near_zero": float(np.mean(w <= relative * top)) if w.size else 0.0,
                }
            elif hasattr(layer, "layers"):
                visit(layer)

    visit(model)
    total = sum(d["total"] for d in layers.values())
    overall = {
        k: (sum(d[k] * d["total"] for d in layers.values()) / total if total else 0.0) for k in ("zero", "near_zero")
    }
    return {"near_zero_relative": relative, "layers": layers, "overall": overall}
