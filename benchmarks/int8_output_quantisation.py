"""Is an int8 file's extra robustness under Square real, or its output quantisation?

    python benchmarks/int8_output_quantisation.py --workdir=runs/q --samples=300 --queries=500

The int8 TFLite files keep float32 inputs and outputs, but their logits are an int8 tensor
dequantised at the end, so they move in steps of its scale. Square is a score-based search: it keeps
a candidate only if the margin improves, and improvements smaller than one step are invisible, so it
stalls on plateaus the float model does not have (score masking, the black-box cousin of gradient
masking). This runs Square, same seed and budget, on the run's float model, on the float model with
its logits rounded to the int8 file's step, and on the int8 file itself. If rounding alone gives the
int8 file's figure, the extra robustness is masking, not robustness.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]


def logit_step(model) -> float:
    """The quantisation scale of the int8 tensor the file's float logits are dequantised from."""
    import numpy as np

    tensors = [
        t
        for t in model._interpreter.get_tensor_details()
        if t["dtype"] == np.int8 and len(t["shape"]) == 2 and int(t["shape"][-1]) == model.num_classes
    ]
    if not tensors:
        sys.exit("error: no int8 logits tensor in the file (is it an int8 export?)")
    return float(tensors[-1]["quantization"][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a finished run with model.keras and an int8 export")
    parser.add_argument("--int8", default="model_int8.tflite", help="the int8 file under export/")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from frep_tf import data, evaluation
    from frep_tf.tflite import TFLiteModel

    with open(os.path.join(args.workdir, "config.json")) as fh:
        cfg = json.load(fh)
    splits = data.load_dataset(
        cfg["data"]["dataset"], data_dir=cfg["data"]["data_dir"] or None, val_size=cfg["data"]["val_size"], seed=0
    )
    xs, ys = zip(*[(np.asarray(x), np.asarray(y)) for x, y in splits.test], strict=True)
    x, y = np.concatenate(xs)[: args.samples], np.concatenate(ys)[: args.samples]
    epsilon = cfg["train"]["epsilon"]
    float_model = keras.models.load_model(os.path.join(args.workdir, "export", "model.keras"))
    int8 = TFLiteModel(os.path.join(args.workdir, "export", args.int8))
    step = logit_step(int8)
    models = {
        "float model.keras": lambda v: float_model(v, training=False),
        f"float, logits rounded to the int8 step ({step:.4g})": lambda v: tf.round(float_model(v) / step) * step,
        f"int8 file {args.int8}": int8,
    }
    print(f"| model | clean | Square-{args.queries} |\n|---|---:|---:|")
    for name, fn in models.items():
        ev = evaluation.evaluate_model(
            fn,
            x,
            y,
            epsilon=epsilon,
            attacks=("clean", "square"),
            square_queries=args.queries,
            sanity=False,
            progress=False,
            seed=0,
        )
        print(f"| {name} | {100 * ev['clean']['accuracy']:.1f} | {100 * ev['square']['accuracy']:.1f} |", flush=True)
    print(f"\n{len(y)} test images of {cfg['data']['dataset']}, eps {epsilon:.4g}, seed 0")


if __name__ == "__main__":
    main()
