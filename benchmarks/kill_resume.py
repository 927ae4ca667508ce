"""Kill a training run at many different moments, resume it, and check it ends exactly where an
uninterrupted run ends.

    python benchmarks/kill_resume.py --out=/tmp/kill_resume --json=/tmp/kill_resume.json
    python benchmarks/kill_resume.py --scenarios=before_prune,pruning

One uninterrupted reference run of the digits quickstart (4 epochs, one-shot pruning at epoch 3 of
4, --deterministic), then for every scenario a fresh workdir: `main.py` is started, killed with
SIGKILL at the scenario's moment (one or more times), started again with the same command until it
finishes. Moments are hit either from outside (a line on stdout or a file in the workdir, plus a
delay) or, when too short to hit that way, by the FREP_TF_TEST_KILL_AT hook (frep_tf/kill_points.py; the flags are tests/helpers.py's),
which makes the process SIGKILL itself at a named point.

Compared with the reference, exactly: results.json in full except wall-clock fields (`timings`,
every `seconds`) and the byte size of the SavedModel directory (TensorFlow writes process-dependent
function names into it; its outputs are compared through max_abs_diff and the evaluation); the
exported model.keras, every weight bit for bit, and the exported kernels' zero pattern (the pruning
masks). The finished workdir must hold no leftovers (temporaries, staging, checkpoint/).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.helpers import QUICK_RUN_FLAGS  # noqa: E402  (after the path insert)

FLAGS = list(QUICK_RUN_FLAGS)

# name: (description, [kill, kill, ...]); a kill is ("line", text, delay) | ("file", relpath, delay)
# | ("hook", "point:n"). The run is restarted after each kill, then once more to finish.
SCENARIOS = {
    "uninterrupted": ("not killed: a second uninterrupted run (is the run itself reproducible?)", []),
    "epoch0": ("during the first epoch, before any checkpoint", [("line", "Epoch 1/4", 1.0)]),
    "before_prune": (
        "during epoch 2, before pruning (newest checkpoint: epoch 1)",
        [("file", "checkpoint/epoch-00001", 0.5)],
    ),
    "checkpoint_write": (
        "while the epoch-2 checkpoint is written (complete under its temporary name, not renamed)",
        [("hook", "checkpoint:2")],
    ),
    "pruning": ("right after the one-shot prune, before the next optimizer step", [("hook", "pruned:1")]),
    "after_prune": (
        "during the last epoch, after pruning (newest checkpoint: epoch 3)",
        [("file", "checkpoint/epoch-00003", 0.5)],
    ),
    "last_checkpoint_write": ("while the final (epoch-4) checkpoint is written", [("hook", "checkpoint:4")]),
    "export": ("during export (0.5 s into the export stage)", [("line", "[frep_tf] export ...", 0.5)]),
    "export_swap": ("exports written and checked in staging, not yet moved into export/", [("hook", "export:1")]),
    "evaluate": ("during the final evaluation (1 s into it)", [("line", "[frep_tf] evaluate ...", 1.0)]),
    "results": ("results.json written, checkpoint not yet deleted", [("hook", "results:1")]),
    "twice": (
        "killed twice: during epoch 2 (before pruning), then right after pruning",
        [("file", "checkpoint/epoch-00001", 0.5), ("hook", "pruned:1")],
    ),
}


def start(workdir: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("FREP_TF_TEST_KILL_AT", None)
    env.update(env_extra or {})
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "main.py"), *FLAGS, f"--workdir={workdir}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env=env,
    )


def run_once(workdir: str, kill=None, timeout: float = 900) -> dict:
    """One process; kills it as `kill` says. Returns returncode, output, seconds, what the workdir held."""
    t0 = time.perf_counter()
    env = {"FREP_TF_TEST_KILL_AT": kill[1]} if kill and kill[0] == "hook" else None
    proc = start(workdir, env)
    lines: list[str] = []
    seen = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if kill and kill[0] == "line" and kill[1] in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if kill and kill[0] in ("line", "file"):
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if kill[0] == "line" and seen.is_set():
                break
            if kill[0] == "file" and os.path.exists(os.path.join(workdir, kill[1])):
                break
            time.sleep(0.05)
        time.sleep(kill[2])
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=timeout)
    reader.join(timeout=10)
    return {
        "returncode": proc.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "output": "".join(lines),
        "workdir_after": snapshot(workdir),
    }


def snapshot(workdir: str) -> list[str]:
    """Top-level entries, and those of checkpoint/ and export/: what a kill left behind."""
    out = []
    if not os.path.isdir(workdir):
        return out
    for name in sorted(os.listdir(workdir)):
        out.append(name)
        if name in ("checkpoint", "export") and os.path.isdir(os.path.join(workdir, name)):
            out.extend(f"{name}/{sub}" for sub in sorted(os.listdir(os.path.join(workdir, name))))
    return out


def strip(results):
    """results.json without its wall-clock fields and the SavedModel's byte size (see module doc)."""
    if isinstance(results, dict):
        out = {k: strip(v) for k, v in results.items() if k not in ("timings", "seconds")}
        if out.get("format") == "saved_model":
            out.pop("bytes", None)
        return out
    if isinstance(results, list):
        return [strip(v) for v in results]
    return results


def differences(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (u, v) in enumerate(zip(a, b, strict=True)) for d in differences(u, v, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def model_weights(workdir: str):
    import keras

    model = keras.models.load_model(os.path.join(workdir, "export", "model.keras"), compile=False)
    return [(w.path, w.numpy()) for w in model.weights]


def compare(reference: str, workdir: str) -> dict:
    import numpy as np

    with open(os.path.join(reference, "results.json")) as fh:
        ref = json.load(fh)
    with open(os.path.join(workdir, "results.json")) as fh:
        got = json.load(fh)
    diffs = differences(strip(ref), strip(got))
    ref_w, got_w = model_weights(reference), model_weights(workdir)
    same_weights = len(ref_w) == len(got_w) and all(
        p == q and np.array_equal(a, b) for (p, a), (q, b) in zip(ref_w, got_w, strict=True)
    )
    same_masks = all(
        np.array_equal(a == 0, b == 0) for (p, a), (_, b) in zip(ref_w, got_w, strict=True) if p.endswith("kernel")
    )
    leftovers = [n for n in snapshot(workdir) if n.split("/")[-1].startswith(".") or n.startswith("checkpoint")]
    return {
        "results_json_differences": diffs,
        "weights_identical": same_weights,
        "masks_identical": same_masks,
        "leftovers": leftovers,
        "match": not diffs and same_weights and same_masks and not leftovers,
        "accuracy": {k: got["evaluation"][k]["accuracy"] for k in ("clean", "fgsm", "pgd")},
    }


def run_scenario(name: str, out: str, reference: str) -> dict:
    description, kills = SCENARIOS[name]
    workdir = os.path.join(out, name)
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.perf_counter()
    attempts = []
    for kill in kills:
        result = run_once(workdir, kill)
        attempts.append(
            {
                "kill": list(kill),
                "returncode": result["returncode"],
                "seconds": result["seconds"],
                "left_behind": result["workdir_after"],
            }
        )
        if result["returncode"] != -signal.SIGKILL:
            raise SystemExit(f"{name}: expected a SIGKILL, got {result['returncode']}:\n{result['output'][-3000:]}")
    final = run_once(workdir)
    resumed = [line.strip() for line in final["output"].splitlines() if "resuming from" in line or "finished" in line]
    attempts.append({"kill": None, "returncode": final["returncode"], "seconds": final["seconds"], "note": resumed})
    if final["returncode"] != 0:
        raise SystemExit(f"{name}: the resumed run failed:\n{final['output'][-3000:]}")
    return {
        "scenario": name,
        "moment": description,
        "attempts": attempts,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        **compare(reference, workdir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/kill_resume")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    names = [n for n in args.scenarios.split(",") if n]
    os.makedirs(args.out, exist_ok=True)
    # Always a fresh reference: one left from an earlier checkout would compare two code versions.
    reference = os.path.join(args.out, "reference")
    shutil.rmtree(reference, ignore_errors=True)
    ref = run_once(reference)
    if ref["returncode"] != 0:
        raise SystemExit(f"reference run failed:\n{ref['output'][-3000:]}")
    print(f"reference (uninterrupted): {ref['seconds']} s", flush=True)
    rows = []
    for name in names:
        row = run_scenario(name, args.out, reference)
        rows.append(row)
        kills = " -> ".join(f"{a['returncode']} ({a['seconds']} s)" for a in row["attempts"])
        print(
            f"{name:22s} match={row['match']!s:5s} weights={row['weights_identical']!s:5s} "
            f"masks={row['masks_identical']!s:5s} diffs={len(row['results_json_differences'])} "
            f"leftovers={row['leftovers']} runs: {kills}; {row['attempts'][-1]['note']}",
            flush=True,
        )
        for d in row["results_json_differences"][:5]:
            print(f"    {d}")
    print(f"{sum(r['match'] for r in rows)} of {len(rows)} scenarios match the uninterrupted run exactly")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"flags": FLAGS, "scenarios": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
