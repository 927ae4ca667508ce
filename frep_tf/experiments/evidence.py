"""A finished cell's evidence: the small files a report needs, kept in the repository so that results
that took hours survive the machine and the workdir they were computed in.

    <results>/experiment.json              the experiment as the runner parsed it
    <results>/cells/<name>/config.json     the cell's resolved configuration
    <results>/cells/<name>/results.json    its results (evaluation, sparsity, timings, ...)
    <results>/cells/<name>/scalars.json    its per-epoch validation scalars {tag: {epoch: value}} (tb/frep)
    <results>/cells/<name>/provenance.json {"commit", "saved"}: the code it ran and when it was saved

Never checkpoints or models. `<results>` defaults to benchmarks/results/<experiment name>/ of the
checkout the runner runs from; `--mode=report --workdir=<results>` builds the report from these files
alone, and the runner counts a cell with evidence there as done, so the same experiment command in a
later session (a fresh workdir) runs only the cells that have none.

    python -m frep_tf.experiments.evidence WORKDIR [RESULTS] [--commit=SHA]   # save every finished cell
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from frep_tf.experiments.tb_events import read_scalars
from frep_tf.io_utils import read_json, write_json_atomic
from frep_tf.workdir import (
    CONFIG_FILE,
    EXPERIMENT_FILE,
    PROVENANCE_FILE,
    RESULTS_FILE,
    SCALARS_FILE,
    VALIDATION_LOG_DIR,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COPIED = (CONFIG_FILE, RESULTS_FILE)


def default_results_dir(experiment_name: str) -> str:
    return os.path.join(REPO_ROOT, "benchmarks", "results", experiment_name)


def has_evidence(results_dir: str, cell_dir: str) -> bool:
    """True when `<results_dir>/<cell_dir>` holds a complete cell (results.json is written last)."""
    try:
        return read_json(os.path.join(results_dir, cell_dir, RESULTS_FILE)) is not None
    except ValueError:
        return False


def code_commit(repo: str = REPO_ROOT) -> str:
    """The commit of `repo`, with "+modified" when tracked files differ from it; "unknown" outside git."""
    try:
        sha = subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+modified" if dirty else "")


def save_cell(source: str, dest: str, commit: str) -> bool:
    """Copy one finished run's evidence from its workdir `source` into `dest` (results.json last);
    False (nothing written) when `source` has no results.json."""
    if read_json(os.path.join(source, RESULTS_FILE)) is None:
        return False
    scalars = read_scalars(os.path.join(source, VALIDATION_LOG_DIR))
    os.makedirs(dest, exist_ok=True)
    write_json_atomic(
        os.path.join(dest, SCALARS_FILE), {tag: {str(k): v for k, v in sorted(s.items())} for tag, s in scalars.items()}
    )
    write_json_atomic(
        os.path.join(dest, PROVENANCE_FILE),
        {"commit": commit, "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    )
    for name in COPIED:  # results.json last: its presence marks the cell complete
        write_json_atomic(os.path.join(dest, name), read_json(os.path.join(source, name)))
    return True


def save_finished(workdir: str, results_dir: str, commit: str | None = None) -> list[str]:
    """Save every finished cell of an experiment workdir that has no evidence yet; returns their names."""
    experiment = read_json(os.path.join(workdir, EXPERIMENT_FILE))
    if experiment is None:
        raise ValueError(f"{workdir}: no {EXPERIMENT_FILE} (not an experiment workdir)")
    commit = commit or code_commit()
    saved = []
    for cell in experiment["cells"]:
        source = os.path.join(workdir, cell["dir"])
        if not has_evidence(results_dir, cell["dir"]) and save_cell(
            source, os.path.join(results_dir, cell["dir"]), commit
        ):
            saved.append(cell["name"])
    write_json_atomic(os.path.join(results_dir, EXPERIMENT_FILE), experiment)
    return saved


def load_scalars(cell_dir: str) -> dict[str, dict[int, float]] | None:
    """A cell's saved per-epoch scalars, or None when it has no scalars.json."""
    data = read_json(os.path.join(cell_dir, SCALARS_FILE))
    if data is None:
        return None
    return {tag: {int(k): float(v) for k, v in values.items()} for tag, values in data.items()}


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--commit=")]
    commits = [a.split("=", 1)[1] for a in argv if a.startswith("--commit=")]
    if len(args) not in (1, 2):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    workdir = args[0]
    experiment = read_json(os.path.join(workdir, EXPERIMENT_FILE)) or {}
    results_dir = args[1] if len(args) == 2 else default_results_dir(experiment.get("name", ""))
    try:
        saved = save_finished(workdir, results_dir, commits[0] if commits else None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"results": results_dir, "saved": saved}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
