"""Training-step cost of FReP vs natural training vs PGD-10 AT, as users run it, side by side in one process.

    python benchmarks/train_step.py                                   # ResNet-18, batch 64, 5 rounds (< 10 min)
    python benchmarks/train_step.py --batch_size=128 --rounds=7 --json out.json
    python benchmarks/train_step.py --arch=small_cnn --image_size=8 --batch_size=128 --breakdown

Times RobustModel's real compiled train step (`train_on_batch`, as `fit` runs it: perturbation, loss,
gradients, `optimizer.apply` with coupled weight decay, and after pruning the projection of the factors)
for
  natural       objective=natural, plain layers
  frep          objective=sre, hadamard layers, the default settings (attack_bn from the config)
  frep_pruned   the same after one-shot pruning to --sparsity (masks set, factors projected every step:
                the state of 70 % of a paper run)
  frep_plain    objective=sre, plain layers (hadamard / plain = the cost of the reparameterization)
  pgd10         objective=pgd (10 steps), plain layers (Madry AT; every baseline pays this step)
on the same synthetic batch. A *round* times one step of every variant, interleaved, so load drift on a
shared machine hits all of them alike; every ratio is computed within a round and the median over
rounds is reported, with its range. The temporal-ensemble update (a callback every 100+ steps) is not
part of the step. Peak memory (peak RSS, VmHWM, of a child process that builds one variant and trains it)
is measured for natural and frep, each in its own process, before this process builds its models.
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
    "frep_pruned": dict(objective="sre", parameterization="hadamard", pruned=True),
    "frep_plain": dict(objective="sre", parameterization="plain"),
    "pgd10": dict(objective="pgd", parameterization="plain"),
    # Opt-in: the perturbation with BatchNorm in inference mode (the default is the config's, train).
    "frep_bneval": dict(objective="sre", parameterization="hadamard", attack_bn="eval"),
}
DEFAULT_VARIANTS = ("natural", "frep", "frep_pruned", "frep_plain", "pgd10")
# (name, numerator, denominator, target on this CPU)
RATIOS = (
    ("frep / natural", "frep", "natural", 2.5),
    ("frep_pruned / natural", "frep_pruned", "natural", 2.5),
    ("hadamard / plain (frep / frep_plain)", "frep", "frep_plain", 1.05),
    ("pgd10 / natural", "pgd10", "natural", 6.5),
    ("pgd10 / frep", "pgd10", "frep", None),
)


def build(name, args, shape):
    import keras
    import numpy as np

    from frep_tf.config import TrainConfig
    from frep_tf.models import build_model
    from frep_tf.training.pruning import global_unstructured_masks
    from frep_tf.training.robust_model import RobustModel

    spec = VARIANTS[name]
    t = TrainConfig()
    net = build_model(args.arch, input_shape=shape, parameterization=spec["parameterization"])
    model = RobustModel(
        net,
        objective=spec["objective"],
        epsilon=t.epsilon,
        sre_lambda=t.sre_lambda,
        pgd_steps=t.pgd_steps,
        pgd_step_size=t.pgd_step_size,
        weight_decay=t.weight_decay,
        attack_bn=spec.get("attack_bn", t.attack_bn),
        ensemble=False,
    )
    model.compile(optimizer=keras.optimizers.SGD(t.lr, momentum=t.momentum), jit_compile=args.jit_compile)
    if spec.get("pruned"):
        kernels = [np.asarray(layer.fused_kernel()) for layer in model.reparam]
        for layer, mask in zip(model.reparam, global_unstructured_masks(kernels, args.sparsity, 0.001), strict=True):
            layer.mask.assign(mask)
            layer.project_factors()
        model.pruned.assign(True)
    return model


def batch(args, shape):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.random((args.batch_size, *shape)).astype("float32"), rng.integers(0, 10, args.batch_size).astype("int32")


def _high_water_mib() -> float:
    """Peak RSS of this process image. Not getrusage's ru_maxrss: Linux carries that over from the parent
    through fork and exec, so a child started by a large parent reports the parent's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def peak_memory_child(name: str, args) -> None:
    """Child mode: peak RSS (MiB) of a process that builds one variant and trains it for a few steps."""
    shape = _shape(args)
    model = build(name, args, shape)
    x, y = batch(args, shape)
    base = _high_water_mib()
    for _ in range(3):
        model.train_on_batch(x, y)
    peak = _high_water_mib()
    print(json.dumps({"peak_mib": peak, "growth_mib": peak - base}))


def breakdown(args) -> dict:
    """Milliseconds per pass of the default FReP step (median of `rounds`): where the time goes."""
    import tensorflow as tf

    from frep_tf import losses

    shape = _shape(args)
    model = build("frep", args, shape)
    x, y = (tf.constant(v) for v in batch(args, shape))
    net, variables = model.network, model.trainable_variables
    bn_train = model.attack_bn == "train"

    @tf.function
    def clean_forward():
        return net(x, training=True)

    @tf.function
    def attack_gradient():
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tf.reduce_sum(net(x, training=bn_train))
        return tape.gradient(out, x)

    @tf.function
    def loss_forward_backward():
        with tf.GradientTape() as tape:
            logits_clean = net(x, training=True)
            logits_adv = net(x, training=True)
            loss = tf.reduce_mean(losses.sre(logits_clean, logits_adv, y, model.sre_lambda))
        return tape.gradient(loss, variables)

    grads = loss_forward_backward()

    @tf.function
    def apply():
        model.optimizer.apply([g + model.weight_decay * v for g, v in zip(grads, variables, strict=True)], variables)

    @tf.function
    def project():
        for layer in model.reparam:
            layer.project_factors()

    @tf.function
    def natural_step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(losses.cross_entropy(net(x, training=True), y))
        return tape.gradient(loss, variables)

    parts = {
        "clean forward (training)": clean_forward,
        "attack: forward + input gradient": attack_gradient,
        "loss: 2 forwards + backward": loss_forward_backward,
        "optimizer.apply (+ weight decay)": apply,
        "project factors (after pruning)": project,
        "natural forward + backward": natural_step,
    }
    for fn in parts.values():
        fn()  # trace
    times = {k: [] for k in parts}
    for _ in range(args.rounds):
        for k, fn in parts.items():
            t = time.perf_counter()
            out = fn()
            if out is not None:
                tf.nest.map_structure(lambda v: v.numpy() if hasattr(v, "numpy") else v, out)
            times[k].append(1000 * (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in times.items()}


def _shape(args):
    channels = 1 if args.arch == "small_cnn" else 3
    return (args.image_size, args.image_size, channels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (one step of every variant each)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (tracing, caches)")
    parser.add_argument("--sparsity", type=float, default=0.99, help="of the frep_pruned variant")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"from {', '.join(VARIANTS)}")
    parser.add_argument("--jit_compile", action="store_true", help="XLA (measured slower on CPU)")
    parser.add_argument("--no_memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--breakdown", action="store_true", help="also time each pass of the FReP step")
    parser.add_argument("--json", default=None, help="write every figure as JSON")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 5 and not args.child:
        parser.error("--rounds: at least 5 (a median of per-round ratios over fewer is not worth reporting)")
    if args.child:
        peak_memory_child(args.child, args)
        return

    import keras
    import tensorflow as tf

    started = time.perf_counter()
    names = args.variants.split(",")
    memory = {}
    if not args.no_memory:
        for name in [n for n in ("natural", "frep") if n in names]:
            cmd = [sys.executable, os.path.abspath(__file__), f"--child={name}", f"--arch={args.arch}"]
            cmd += [f"--batch_size={args.batch_size}", f"--image_size={args.image_size}"]
            cmd += ["--jit_compile"] if args.jit_compile else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            memory[name] = json.loads(out.strip().splitlines()[-1])
    keras.utils.set_random_seed(0)
    shape = _shape(args)
    x, y = batch(args, shape)
    models = {name: build(name, args, shape) for name in names}
    for _ in range(args.warmup):
        for name in names:
            models[name].train_on_batch(x, y)
    times = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names:
            t = time.perf_counter()
            models[name].train_on_batch(x, y)  # returns numpy logs: the step has finished
            times[name].append(1000 * (time.perf_counter() - t))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {times[n][-1]:.0f} ms" for n in names), flush=True)
    del models
    parts = breakdown(args) if args.breakdown else {}

    load = os.getloadavg()
    print(
        f"\n{args.arch}, batch {args.batch_size}, {shape[0]}x{shape[1]}x{shape[2]} synthetic, {args.rounds} rounds "
        f"(+{args.warmup} warm-up), XLA {'on' if args.jit_compile else 'off'}, {platform.machine()} "
        f"{os.cpu_count()} CPUs, load average {load[0]:.1f}, TF {tf.__version__}, Keras {keras.__version__}, "
        f"{time.perf_counter() - started:.0f} s in all\n"
    )
    print("| variant | median ms / step | min | max |")
    print("|---|---:|---:|---:|")
    for name in names:
        v = times[name]
        print(f"| {name} | {statistics.median(v):.0f} | {min(v):.0f} | {max(v):.0f} |")
    ratios = {}
    print("\n| ratio (per round) | median | min | max | target |")
    print("|---|---:|---:|---:|---:|")
    for label, a, b, target in RATIOS:
        if a in times and b in times:
            per_round = [ta / tb for ta, tb in zip(times[a], times[b], strict=True)]
            med = statistics.median(per_round)
            ratios[label] = {"median": med, "min": min(per_round), "max": max(per_round), "target": target}
            verdict = "-" if target is None else f"<= {target} {'met' if med <= target else 'MISSED'}"
            print(f"| {label} | {med:.2f} | {min(per_round):.2f} | {max(per_round):.2f} | {verdict} |")
    if memory:
        print("\n| variant | peak RSS (MiB) | growth while training (MiB) |")
        print("|---|---:|---:|")
        for name, m in memory.items():
            print(f"| {name} | {m['peak_mib']:.0f} | {m['growth_mib']:.0f} |")
        if {"natural", "frep"} <= memory.keys():
            ratio = memory["frep"]["peak_mib"] / memory["natural"]["peak_mib"]
            ratios["peak memory frep / natural"] = {"median": ratio, "target": 1.10}
            print(f"\npeak memory frep / natural = {ratio:.2f} (target <= 1.10; paper 3.83 / 3.60 GB = 1.06)")
    if parts:
        print("\n| pass of the FReP step | median ms |")
        print("|---|---:|")
        for k, v in parts.items():
            print(f"| {k} | {v:.0f} |")
    if args.json:
        payload = {
            "times_ms": times,
            "ratios": ratios,
            "memory": memory,
            "breakdown_ms": parts,
            "args": vars(args),
            "load_average": load,
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)


if __name__ == "__main__":
    main()
