"""Golden runs: two small deterministic runs through main.py whose exported weights and results are
fingerprinted, so a restructuring of the code can be shown to change nothing (tests/test_golden.py).

    python tests/golden/record.py          # record on this machine (only when numbers are meant to change,
                                           # or on a new kind of CPU; say why)

The bits of a run depend on the CPU's instruction set (the width of vectorised reductions), so
golden.json holds one recording per kind of machine (model name, numeric instruction-set features,
TensorFlow and Python versions); the test compares with the recording of the machine it runs on.

Each run writes every flag out (no flagfile, so a changed default cannot slip in unnoticed). The
fingerprint of a run: sha256 of every exported weight array (model.keras, in layer order) and
results.json without the fields that measure time, paths or the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
GOLDEN_FILE = os.path.join(HERE, "golden.json")

_COMMON = [
    "--dataset=digits",
    "--arch=small_cnn",
    "--width=1.0",
    "--epsilon=0.1",
    "--batch_size=32",
    "--lr=0.05",
    "--val_size=0.1",
    "--train_samples=600",
    "--val_samples=64",
    "--val_pgd_steps=3",
    "--eval_attacks=clean,fgsm,pgd",
    "--eval_pgd_steps=5",
    "--eval_samples=100",
    "--export=keras",
    "--noeval_tflite",
    "--deterministic",
    "--seed=0",
]
RUNS = {
    # The quickstart's flags (configs/quickstart.cfg), shortened to seconds.
    "quickstart": _COMMON
    + [
        "--method=frep",
        "--parameterization=hadamard",
        "--objective=sre",
        "--sparsity=0.9",  # 0.99 after 2 short epochs can empty conv3, which the pipeline refuses
        "--epochs=4",
        "--prune_epoch=2",
        "--ensemble_interval=10",
        "--attack_bn=eval",
        "--ensemble_restart",
        "--noensemble_final_update",  # the default until the proving ground's measurement
    ],
    # HYDRA: pretrain -> score learning -> finetune, each stage shortened by --epoch_scale.
    "hydra": _COMMON
    + [
        "--method=hydra",
        "--parameterization=plain",
        "--objective=pgd",
        "--pgd_steps=3",
        "--noensemble",
        "--sparsity=0.9",
        "--epoch_scale=0.02",
    ],
}
# One TensorFlow thread each way: the bits of a run depend on how reductions are split over threads, so
# the golden runs fix it (the test suite runs with the same setting, tests/conftest.py).
THREADS = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
# Fields that measure time, memory, paths or the machine, not what was computed (and name parts of such).
MEASURED = ("seconds", "rss", "time")
VOLATILE = {
    "seconds",
    "timings",
    "wall_seconds",
    "peak_rss_bytes",
    "path",
    "workdir",
    "evaluated_path",
    "started",
    "finished",
}


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE and not any(m in k for m in MEASURED)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def fingerprint(workdir: str) -> dict:
    import keras
    import numpy as np

    model = keras.models.load_model(os.path.join(workdir, "export", "model.keras"))
    weights = {
        f"{layer.name}/{i}": hashlib.sha256(np.ascontiguousarray(w).tobytes()).hexdigest()
        for layer in model.layers
        for i, w in enumerate(layer.get_weights())
    }
    with open(os.path.join(workdir, "results.json")) as fh:
        results = _strip(json.load(fh))
    return {"weights": weights, "results": results}


def run(name: str, workdir: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "main.py", *RUNS[name], f"--workdir={workdir}", "--verbose=0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **THREADS, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    if proc.returncode:
        raise RuntimeError(f"golden run {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return fingerprint(workdir)


# CPU features that change which kernels TensorFlow / oneDNN run, and so the bits of a float reduction
# (AVX-512 sums 16 floats at a time, AVX2 8): two machines that both print "AMD EPYC" may differ here.
NUMERIC_ISA = ("avx", "amx", "fma", "f16c")  # prefixes: avx2, avx512f, avx512_vnni, avx_vnni, amx_tile, ...


def machine() -> dict:
    import tensorflow as tf

    name, features = "", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not features:
                    features = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu": name or platform.processor(),
        "isa": " ".join(sorted(f for f in features if f.startswith(NUMERIC_ISA))),
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
    }


def recording_for(golden: dict, here: dict) -> dict | None:
    """The recording made on a machine like this one; else the one recorded before the instruction set
    was noted (isa missing), which stands for any machine without a recording of its own."""
    recordings = golden["recordings"]
    same = [r for r in recordings if r["machine"] == here]
    if same:
        return same[0]
    legacy = [r for r in recordings if "isa" not in r["machine"]]
    unnoted = {k: v for k, v in here.items() if k != "isa"}
    if (
        legacy
        and legacy[0]["machine"] == unnoted
        and not any(r["machine"].get("isa") == here["isa"] for r in recordings)
    ):
        return legacy[0]
    return None


def main() -> None:
    """Record on this machine: replaces this machine's recording, keeps the other machines' ones."""
    here = machine()
    recording = {"machine": here, "commit": _commit(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            recording["runs"][name] = {"flags": RUNS[name], **run(name, os.path.join(tmp, name))}
    golden = {"recordings": []}
    if os.path.exists(GOLDEN_FILE):
        with open(GOLDEN_FILE) as fh:
            golden = json.load(fh)
    golden["recordings"] = [r for r in golden["recordings"] if r["machine"] != here] + [recording]
    with open(GOLDEN_FILE, "w") as fh:
        json.dump(golden, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(f"wrote {GOLDEN_FILE} ({len(golden['recordings'])} machine(s))")


def _commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
