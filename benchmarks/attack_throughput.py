"""Seconds per attack on N inputs of an architecture, every point attacked for the full budget.

    python benchmarks/attack_throughput.py --arch=resnet18 --n=100 --attacks=pgd,autoattack

Labels are the model's own predictions (clean accuracy 100 %), so every point is attacked. With
`--epsilon` tiny (default 1e-4) no point is broken early, so iterative attacks run all their steps:
this is the worst-case (most expensive) time, as on a very robust model. Untrained weights; the time of
an attack does not depend on what the weights are.

Where the full budget takes hours (AutoAttack on resnet18 on a 2-core CPU), `--scales=0.02,0.04`
runs every attack with its iteration budgets (PGD steps; APGD and FAB steps; Square queries; the 9
target classes stay) scaled down, and fits seconds = fixed + per_budget * scale per AutoAttack stage
through the points measured below scale 1: with nothing broken early, each iteration costs the same,
so the fit predicts the full (scale 1) time. Add 1 to the scales to measure it as well and see the error.
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
    parser.add_argument("--scales", default="1", help="budget fractions to run, e.g. 0.02,0.04 (fit to 1)")
    args = parser.parse_args()
    scales = sorted({float(v) for v in args.scales.split(",")})

    import keras
    import numpy as np
    import tensorflow as tf

    from frep_tf import evaluation
    from frep_tf.attacks import autoattack
    from frep_tf.fuse import fuse
    from frep_tf.models import build_model

    keras.utils.set_random_seed(0)
    channels = 1 if args.arch == "small_cnn" else 3
    shape = (args.image_size, args.image_size, channels)
    model = fuse(build_model(args.arch, input_shape=shape, parameterization="plain"))
    x = np.random.default_rng(0).random((args.n, *shape)).astype("float32")
    y = np.asarray(model(x, training=False)).argmax(-1)

    def model_fn(v):
        return model(v, training=False)

    print(
        f"{args.arch}, {args.n} inputs {shape}, eps {args.epsilon}, {platform.machine()} {os.cpu_count()} CPUs, TF {tf.__version__}"
    )
    print("| attack | scale | seconds | accuracy |\n|---|---:|---:|---:|")
    measured = {}  # (attack or AutoAttack stage) -> [(scale, seconds)]
    for attack in args.attacks.split(","):
        for scale in scales:
            t = time.perf_counter()
            if attack == "autoattack":
                settings = autoattack.Settings(
                    apgd_steps=max(round(100 * scale), 1),
                    fab_steps=max(round(100 * scale), 1),
                    square_queries=max(round(5000 * scale), 1),
                )
                res = autoattack.run(
                    model_fn, x, y, eps=args.epsilon, settings=settings, batch_size=args.batch_size, progress=False
                )
                accuracy = res.accuracy
                for stage in autoattack.ATTACKS:
                    measured.setdefault(f"autoattack {stage}", []).append((scale, res.seconds[stage]))
            else:
                out = evaluation.evaluate_model(
                    model_fn,
                    x,
                    y,
                    epsilon=args.epsilon,
                    attacks=(attack,),
                    batch_size=args.batch_size,
                    pgd_steps=max(round(50 * scale), 1),
                    mim_steps=max(round(50 * scale), 1),
                    square_queries=max(round(5000 * scale), 1),
                    sanity=False,
                    progress=False,
                )
                accuracy = out[attack]["accuracy"]
            seconds = time.perf_counter() - t
            measured.setdefault(attack, []).append((scale, seconds))
            print(f"| {attack} | {scale:g} | {seconds:.0f} | {accuracy:.2f} |", flush=True)
    if sum(scale < 1 for scale in scales) >= 2:
        print("\nLeast-squares fit seconds = fixed + per_budget * scale through the scales < 1, at scale 1:")
        print("| attack | fixed s | s per full budget | predicted full-budget s | measured full-budget s |")
        print("|---|---:|---:|---:|---:|")
        for name, points in measured.items():
            s_arr, t_arr = np.array([p for p in points if p[0] < 1]).T
            per_budget, fixed = np.polyfit(s_arr, t_arr, 1)
            full = [f"{t:.0f}" for scale, t in points if scale == 1] or ["-"]
            print(f"| {name} | {fixed:.0f} | {per_budget:.0f} | {fixed + per_budget:.0f} | {full[0]} |")


if __name__ == "__main__":
    main()
