"""Size and batch-1 latency of every exported TFLite file of a run, on the LiteRT interpreter, with its
accuracy and robust accuracy from the run's evaluation: one table, one command.

    python benchmarks/tflite_latency.py --workdir=runs/quickstart
    python benchmarks/tflite_latency.py --build=resnet18_ch70 --workdir=/tmp/r18_ch70

`--build` first writes the files to time (no training): ResNet-18 on CIFAR-10 shapes (32x32x3, 10
classes), random weights, pruned as training prunes: `resnet18_ch70` has FReP-CH layers and 70 % of
its channels removed by structured pruning (residual groups, bias and BatchNorm zeroed), exported as
float (dense and sparse-encoded), int8 (dense and sparse-encoded) and compact (float and int8);
`resnet18_s99` has FReP layers with 99 % of kernel weights removed by unstructured pruning.
int8 files are calibrated on random images there, so their top-1 agreement says little; accuracy
columns need a trained run (`--workdir` of `python main.py ... --export=...`).

Latency: every file gets its own interpreter per thread count, XNNPACK on (the default delegate; a
file it cannot run falls back to the builtin kernels, and the table says so), a fixed random image
bound once; after a warm-up, single invocations of all files are interleaved round after round so
load drift hits every file alike. Median, 90th percentile and minimum per image, in milliseconds (on a
shared machine the minimum is the run least disturbed by other jobs, the closest to an idle device).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]

# In the order of the table: the formats main.py exports as TFLite files.
ORDER = ("tflite", "tflite_sparse", "tflite_int8_dense", "tflite_int8", "compact_tflite", "compact_tflite_int8")
TITLES = {
    "tflite": "float, dense",
    "tflite_sparse": "float, sparse-encoded",
    "tflite_int8_dense": "int8, dense",
    "tflite_int8": "int8, sparse-encoded",
    "compact_tflite": "compact float",
    "compact_tflite_int8": "compact int8",
}


BUILDS = {
    # name: (parameterization, structured, sparsity, formats)
    "resnet18_ch70": ("channel", True, 0.7, ("tflite", "tflite_sparse", "tflite_int8_dense", "tflite_int8", "compact")),
    "resnet18_s99": ("hadamard", False, 0.99, ("tflite", "tflite_sparse", "tflite_int8_dense", "tflite_int8")),
}


def build(name: str, workdir: str, seed: int = 0) -> dict:
    """Export a random-weight ResNet-18 pruned as `name` says (BUILDS) into workdir; write results.json."""
    import keras
    import numpy as np

    from frep_tf import export
    from frep_tf.fuse import fuse
    from frep_tf.layers import reparam_layers
    from frep_tf.models import build_model
    from frep_tf.structure import channel_graph
    from frep_tf.training.pruning import (
        global_unstructured_masks,
        group_channel_keep,
        kernel_sparsity,
        zero_removed_channels,
    )

    parameterization, structured, sparsity, formats = BUILDS[name]
    keras.utils.set_random_seed(seed)
    net = build_model("resnet18", input_shape=(32, 32, 3), num_classes=10, parameterization=parameterization)
    layers = reparam_layers(net)
    kernels = [np.asarray(layer.fused_kernel()) for layer in layers]
    if structured:  # what GlobalPruning(structured=True) does during training
        graph = channel_graph(net)
        keep = group_channel_keep({layer.name: k for layer, k in zip(layers, kernels, strict=True)}, graph, sparsity)
        masks = [np.broadcast_to(keep[graph.output_group[layer.name]], layer.mask.shape) for layer in layers]
    else:
        masks = global_unstructured_masks(kernels, sparsity)
    for layer, mask in zip(layers, masks, strict=True):
        layer.mask.assign(np.asarray(mask, np.float32))
    if structured:
        zero_removed_channels(net, graph)
    fused = fuse(net)
    rng = np.random.default_rng(seed)
    x = rng.random((16, 32, 32, 3)).astype("float32")
    calibration = rng.random((64, 32, 32, 3)).astype("float32")
    report = {}
    records = export.export_model(
        fused,
        os.path.join(workdir, "export"),
        formats=formats,
        check_inputs=x,
        representative=calibration,
        int8_min_agreement=0.0,  # random weights: top-1 margins are tiny; the agreement is reported
        compact_report=report,
    )
    results = {
        "mode": "build",
        "model": {"arch": "resnet18", "parameterization": parameterization, "weights": "random", "seed": seed},
        "pruning": {"structured": structured, "sparsity": sparsity},
        "sparsity": kernel_sparsity(fused),
        "compact": report or None,
        "exports": [
            {"format": r.format, "path": os.path.relpath(r.path, workdir), "bytes": r.bytes, "agreement": r.agreement}
            for r in records
        ],
    }
    with open(os.path.join(workdir, "results.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    return results


def time_files(files: dict, image_shape, threads, rounds: int, warmup: int, seed: int = 0) -> dict:
    """{(format, threads): {"median_ms", "p90_ms", "resolver"}} from interleaved single invocations."""
    import numpy as np

    from frep_tf.tflite import TFLiteModel

    x = np.random.default_rng(seed).random((1, *image_shape)).astype("float32")
    runners = {}
    for fmt, path in files.items():
        for n in threads:
            try:
                model, resolver = TFLiteModel(path, num_threads=n, xnnpack=True), "xnnpack"
                model.bind(x)
                model.invoke()
            except (RuntimeError, ValueError):
                model, resolver = TFLiteModel(path, num_threads=n, xnnpack=False), "builtin"
                model.bind(x)
            runners[(fmt, n)] = (model, resolver)
    for model, _ in runners.values():
        for _ in range(warmup):
            model.invoke()
    seconds = {key: [] for key in runners}
    for _ in range(rounds):
        for key, (model, _) in runners.items():
            t = time.perf_counter()
            model.invoke()
            seconds[key].append(time.perf_counter() - t)
    out = {}
    for key, values in seconds.items():
        values = sorted(values)
        out[key] = {
            "median_ms": 1000 * statistics.median(values),
            "p90_ms": 1000 * values[min(len(values) - 1, int(0.9 * len(values)))],
            "min_ms": 1000 * values[0],  # the least disturbed run: closest to an idle machine
            "resolver": runners[key][1],
        }
    return out


def _pct(entry, *keys):
    for k in keys:
        if not isinstance(entry, dict) or k not in entry:
            return "-"
        entry = entry[k]
    return f"{100 * entry:.1f}"


def table(results: dict, workdir: str, timings: dict, threads) -> str:
    exports = {e["format"]: e for e in results.get("exports", [])}
    evaluated = results.get("evaluation_tflite") or {}
    dense = timings.get(("tflite", threads[0]))
    dense_bytes = exports.get("tflite", {}).get("bytes")
    head = ["File", "Format", "Bytes", "vs dense"]
    for n in threads:
        head += [f"median ms ({n} thr)", f"p90 ms ({n} thr)"]
    head += [
        f"min ms ({threads[0]} thr)",
        f"speed-up ({threads[0]} thr, median / min)",
        "Clean %",
        "Transfer PGD %",
        "Square %",
        "resolver",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fmt in ORDER:
        if fmt not in exports:
            continue
        e = exports[fmt]
        row = [os.path.basename(e["path"]), TITLES[fmt], f"{e['bytes']:,}"]
        row.append(f"{e['bytes'] / dense_bytes:.3f}" if dense_bytes else "-")
        for n in threads:
            t = timings[(fmt, n)]
            row += [f"{t['median_ms']:.3f}", f"{t['p90_ms']:.3f}"]
        t = timings[(fmt, threads[0])]
        row.append(f"{t['min_ms']:.3f}")
        row.append(
            f"{dense['median_ms'] / t['median_ms']:.2f}x / {dense['min_ms'] / t['min_ms']:.2f}x" if dense else "-"
        )
        ev = evaluated.get(fmt, {})
        row += [_pct(ev, "clean", "accuracy"), _pct(ev, "transfer_pgd", "accuracy"), _pct(ev, "square", "accuracy")]
        row.append("/".join(sorted({timings[(fmt, n)]["resolver"] for n in threads})))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir",
        required=True,
        action="append",
        help="a run's workdir (results.json, export/); repeat to time several runs' files side by side in one process",
    )
    parser.add_argument("--build", choices=tuple(BUILDS), default=None, help="first write these files (one workdir)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=100, help="timed invocations per file and thread count")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the results to this path")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if args.build:
        if len(args.workdir) != 1:
            sys.exit("error: --build writes into one --workdir")
        os.makedirs(args.workdir[0], exist_ok=True)
        build(args.build, args.workdir[0])
    runs, files = {}, {}
    for workdir in args.workdir:
        path = os.path.join(workdir, "results.json")
        if not os.path.exists(path):
            sys.exit(f"error: --workdir={workdir}: no results.json (run main.py there, or use --build)")
        with open(path) as fh:
            runs[workdir] = json.load(fh)
        found = {e["format"]: os.path.join(workdir, e["path"]) for e in runs[workdir].get("exports", [])}
        found = {fmt: p for fmt, p in found.items() if fmt in ORDER}
        if not found:
            sys.exit(f"error: --workdir={workdir}: no TFLite file among the exports (add tflite to --export)")
        files.update({(workdir, fmt): p for fmt, p in found.items()})
    from frep_tf.tflite import TFLiteModel

    shapes = {tuple(TFLiteModel(p).input_shape) for p in files.values()}
    start = time.perf_counter()
    timings = {}
    for shape in shapes:  # runs with the same image shape are timed together, interleaved
        group = {k: p for k, p in files.items() if tuple(TFLiteModel(p).input_shape) == shape}
        timings.update(time_files(group, shape, threads, args.rounds, args.warmup))
    load = os.getloadavg()
    for workdir, results in runs.items():
        mine = {(fmt, n): t for ((w, fmt), n), t in timings.items() if w == workdir}
        print(f"\n{workdir}\n")
        print(table(results, workdir, mine, threads))
    print(
        f"\n{args.rounds} interleaved batch-1 invocations per file and thread count after {args.warmup} warm-up; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.2f} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    if args.json:
        with open(args.json, "w") as fh:
            out = {f"{k[0][0]}:{k[0][1]}@{k[1]}": v for k, v in timings.items()}
            json.dump(out | {"load": load}, fh, indent=2)


if __name__ == "__main__":
    main()
