"""max |fuse(model)(x) - model(x)| for every architecture x parameterization at full width.

    python benchmarks/fuse_check.py [--batch_size=8] [--archs=resnet18,vgg16]

Random 50 % masks and random BatchNorm statistics (as in tests/test_fuse.py, which runs the same check
at width 1/8 in the test suite), random [0, 1] inputs, inference mode.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def main() -> None:
    import numpy as np
    from test_fuse import randomize

    from frep_tf.fuse import fuse
    from frep_tf.layers import PARAMETERIZATIONS
    from frep_tf.models import ARCHITECTURES, build_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--archs", default=",".join(ARCHITECTURES))
    args = parser.parse_args()
    print("| arch | parameterization | max abs diff | max abs logit | seconds |")
    print("|---|---|---:|---:|---:|")
    worst = 0.0
    for arch in args.archs.split(","):
        shape = (8, 8, 1) if arch == "small_cnn" else (32, 32, 3)
        x = np.random.default_rng(1).random((args.batch_size, *shape)).astype("float32")
        for p in PARAMETERIZATIONS:
            t = time.perf_counter()
            model = build_model(arch, input_shape=shape, parameterization=p)
            randomize(model)
            ref = np.asarray(model(x, training=False))
            diff = float(np.abs(np.asarray(fuse(model)(x, training=False)) - ref).max())
            worst = max(worst, diff)
            print(
                f"| {arch} | {p} | {diff:.2e} | {np.abs(ref).max():.3g} | {time.perf_counter() - t:.0f} |", flush=True
            )
    print(f"\nworst max |diff| = {worst:.2e}")


if __name__ == "__main__":
    main()
