"""Training-step cost of FReP vs natural training vs PGD-10 AT, side by side in one process.

    python benchmarks/train_step.py --arch=resnet18 --batch_size=128 --steps=5 --json out.json
    python benchmarks/train_step.py --arch=small_cnn --image_size=8 --batch_size=128

Times RobustModel's real compiled train step (`train_on_batch`, as `fit` runs it) for
  natural      objective=natural, plain layers
  frep         objective=sre, hadamard layers (FReP)
  frep_plain   objective=sre, plain layers (the cost of the reparameterization alone)
  pgd10        objective=pgd (10 steps), plain layers (Madry AT)
on the same synthetic batch. Steps run interleaved (natural, frep, frep_plain, pgd10, natural, ...)
so load drift on a shared machine hits every variant alike; medians are reported. Peak memory (RSS
growth during training steps) is measured per variant in a child process, since a process's peak
cannot be attributed to one of several models living in it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = {
    "natural": dict(objective="natural", parameterization="plain"),
    "frep": dict(objective="sre", parameterization="hadamard"),
    "frep_plain": dict(objective="sre", parameterization="plain"),
    "pgd10": dict(objective="pgd", parameterization="plain"),
    # Opt-in (--variants=...,frep_bneval): BatchNorm in inference mode while the perturbation is made.
    "frep_bneval": dict(objective="sre", parameterization="hadamard", attack_bn="eval"),
}
DEFAULT_VARIANTS = ("natural", "frep", "frep_plain", "pgd10")


def build(name, args, shape):
    import keras

    from frep_tf.models import build_model
    from frep_tf.training.robust_model import RobustModel

    spec = VARIANTS[name]
    net = build_model(args.arch, input_shape=shape, parameterization=spec["parameterization"])
    # Ensemble off: its update is a callback every 100 steps, not part of the step.
    model = RobustModel(
        net,
        objective=spec["objective"],
        epsilon=8 / 255,
        pgd_steps=10,
        weight_decay=2e-4,
        ensemble=False,
        attack_bn=spec.get("attack_bn", "train"),
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=args.jit_compile)
    return model


def batch(args, shape):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.random((args.batch_size, *shape)).astype("float32"), rng.integers(0, 10, args.batch_size).astype("int32")


def peak_memory_child(name: str, args) -> None:
    """Child mode: print the RSS growth (MiB) of `steps` training steps of one variant."""
    shape = _shape(args)
    model = build(name, args, shape)
    x, y = batch(args, shape)
    model.train_on_batch(x[:2], y[:2])  # build variables and trace once at a tiny batch
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2):
        model.train_on_batch(x, y)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": (after - before) / 1024}))


def _shape(args):
    channels = 1 if args.arch == "small_cnn" else 3
    return (args.image_size, args.image_size, channels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"from {', '.join(VARIANTS)}")
    parser.add_argument("--jit_compile", action="store_true", help="XLA (measured slower on CPU)")
    parser.add_argument("--no_memory", action="store_true", help="skip the per-variant memory children")
    parser.add_argument("--json", default=None, help="write {natural_ms, frep_ms, frep_plain_ms, pgd10_ms, ...}")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_memory_child(args.child, args)
        return

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    shape = _shape(args)
    names = args.variants.split(",")
    x, y = batch(args, shape)
    models = {name: build(name, args, shape) for name in names}
    for name in names:
        for _ in range(args.warmup):
            models[name].train_on_batch(x, y)
    times = {name: [] for name in names}
    for step in range(args.steps):
        for name in names:
            t = time.perf_counter()
            models[name].train_on_batch(x, y)  # returns numpy logs: the step has finished
            times[name].append(1000 * (time.perf_counter() - t))
        print(f"step {step + 1}/{args.steps}: " + ", ".join(f"{n} {times[n][-1]:.0f} ms" for n in names), flush=True)
    ms = {name: statistics.median(v) for name, v in times.items()}
    memory = {}
    if not args.no_memory:
        for name in names:
            cmd = [sys.executable, os.path.abspath(__file__), f"--child={name}", f"--arch={args.arch}"]
            cmd += [f"--batch_size={args.batch_size}", f"--image_size={args.image_size}"]
            cmd += ["--jit_compile"] if args.jit_compile else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            memory[name] = json.loads(out.strip().splitlines()[-1])["peak_mib"]

    print(
        f"\n{args.arch}, batch {args.batch_size}, {shape[0]}x{shape[1]}x{shape[2]} synthetic, {args.steps} interleaved "
        f"steps per variant (median), XLA {'on' if args.jit_compile else 'off'}, {platform.machine()} "
        f"{os.cpu_count()} CPUs, TF {tf.__version__}, Keras {keras.__version__}\n"
    )
    print("| variant | median ms / step | vs natural | peak memory growth (MiB) |")
    print("|---|---:|---:|---:|")
    for name in names:
        mem = f"{memory[name]:.0f}" if name in memory else "-"
        print(f"| {name} | {ms[name]:.0f} | {ms[name] / ms.get('natural', ms[name]):.2f}x | {mem} |")
    ratios = {}
    if {"frep", "natural"} <= ms.keys():
        ratios["frep_over_natural"] = ms["frep"] / ms["natural"]
    if {"frep", "frep_plain"} <= ms.keys():
        ratios["frep_over_frep_plain"] = ms["frep"] / ms["frep_plain"]
    if {"pgd10", "frep"} <= ms.keys():
        ratios["pgd10_over_frep"] = ms["pgd10"] / ms["frep"]
    print("\n" + ", ".join(f"{k} = {v:.2f}" for k, v in ratios.items()))
    if args.json:
        payload = {f"{n}_ms": ms[n] for n in names} | ratios | {f"{n}_peak_mib": m for n, m in memory.items()}
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)


if __name__ == "__main__":
    main()
