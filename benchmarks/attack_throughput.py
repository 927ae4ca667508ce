"""Seconds per attack on N inputs of an architecture, every point attacked for the full budget.

    python benchmarks/attack_throughput.py --arch=resnet18 --n=100 --attacks=pgd,autoattack

Labels are the model's own predictions (clean accuracy 100 %), so every point is attacked. With
`--epsilon` tiny (default 1e-4) no point is broken early, so iterative attacks run all their steps:
this is the worst-case (most expensive) time, as on a very robust model. Untrained weights; the time of
an attack does not depend on what the weights are.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--epsilon", type=float, default=1e-4)
    parser.add_argument("--attacks", default="pgd,autoattack")
    parser.add_argument("--batch_size", type=int, default=100)
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from frep_tf import evaluate
    from frep_tf.fuse import fuse
    from frep_tf.models import build_model

    keras.utils.set_random_seed(0)
    channels = 1 if args.arch == "small_cnn" else 3
    shape = (args.image_size, args.image_size, channels)
    model = fuse(build_model(args.arch, input_shape=shape, parameterization="plain"))
    x = np.random.default_rng(0).random((args.n, *shape)).astype("float32")
    y = np.asarray(model(x, training=False)).argmax(-1)
    print(
        f"{args.arch}, {args.n} inputs {shape}, eps {args.epsilon}, {platform.machine()} {os.cpu_count()} CPUs, TF {tf.__version__}"
    )
    print("| attack | seconds | accuracy |\n|---|---:|---:|")
    for attack in args.attacks.split(","):
        t = time.perf_counter()
        out = evaluate.evaluate_model(
            lambda v: model(v, training=False),
            x,
            y,
            epsilon=args.epsilon,
            attacks=(attack,),
            batch_size=args.batch_size,
            pgd_steps=50,
            sanity=False,
            progress=False,
        )
        print(f"| {attack} | {time.perf_counter() - t:.0f} | {out[attack]['accuracy']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
