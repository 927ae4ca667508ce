"""Forward+backward cost of hadamard (and channel) layers relative to plain layers, side by side.

    python benchmarks/layer_overhead.py --arch=resnet18 --batch_size=128 --steps=7

Builds the same architecture with each parameterization in one process, compiles one
forward+backward step per model (gradients of the cross-entropy with respect to every trainable
variable), warms up, then runs the steps interleaved (plain, hadamard, channel, plain, ...) so that
drift in machine load hits every model alike. Prints the median ms per step and the ratios to plain.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=7, help="timed steps per model (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--parameterizations", default="plain,hadamard,channel")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--json", default=None, help="also write the results to this path")
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from frep_tf.models import build_model

    keras.utils.set_random_seed(0)
    channels = 1 if args.arch == "small_cnn" else 3
    shape = (args.image_size, args.image_size, channels)
    x = tf.constant(np.random.default_rng(0).random((args.batch_size, *shape)), tf.float32)
    y = tf.constant(np.random.default_rng(1).integers(0, 10, args.batch_size), tf.int32)
    names = args.parameterizations.split(",")
    steps = {}
    for name in names:
        model = build_model(args.arch, input_shape=shape, parameterization=name)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function
        def step(model=model, loss_fn=loss_fn):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            return tape.gradient(loss, model.trainable_variables)

        steps[name] = step
        for _ in range(args.warmup):
            step()
    times = {name: [] for name in names}
    for _ in range(args.steps):
        for name in names:
            t = time.perf_counter()
            grads = steps[name]()
            _ = [g.numpy() for g in grads[:1]]  # make sure the step has finished
            times[name].append(1000 * (time.perf_counter() - t))
    median = {name: statistics.median(v) for name, v in times.items()}
    print(
        f"{args.arch}, batch {args.batch_size}, {args.steps} interleaved steps per model, "
        f"{platform.machine()} with {os.cpu_count()} CPUs, TF {tf.__version__}"
    )
    print("| parameterization | median ms / fwd+bwd step | ratio to plain |")
    print("|---|---:|---:|")
    for name in names:
        print(f"| {name} | {median[name]:.0f} | {median[name] / median['plain']:.3f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({f"{n}_ms": median[n] for n in names} | {"steps": args.steps}, fh, indent=2)


if __name__ == "__main__":
    main()
