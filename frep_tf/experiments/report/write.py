"""`write_report`: report.md and the figures of an experiment workdir, rebuilt from its finished cells;
`main`: the same from the command line (`python -m frep_tf.experiments.report WORKDIR`)."""

from __future__ import annotations

import os
import sys

from frep_tf.experiments.report.cells import ReportError, load_cost, load_experiment, load_scalars
from frep_tf.experiments.report.claims import checked_claims, judge_all
from frep_tf.experiments.report.figures import draw_figures
from frep_tf.experiments.report.markdown import markdown
from frep_tf.experiments.report.stats import attack_columns, build_rows, cost_rows, row_summary, validation_only
from frep_tf.workdir import EXPERIMENT_FILE, REPORT_FILE


def write_report(workdir: str, claims: list[dict] | None = None) -> dict:
    """Write <workdir>/report.md and <workdir>/figures/*.png from the finished cells (and cost.json, the
    training cost measured side by side, when --mode=cost wrote one); returns a summary:
    {"report", "figures": {fig8|fig7|fig5: path}, "cells": {total, finished, failed, pending}, "rows",
    "claims": [{label, metric, op, line, a, b, difference, verdict, text}] (frep_tf.experiments.report.claims),
    "failed": [{name, reason, exit_status}], "pending": [names], "problems": [one-line notes]}.
    `claims` ({label, metric, op, a, b, line} each) replace experiment.json's `claims`."""
    experiment, cells, axes, problems = load_experiment(workdir)
    source = os.path.join(workdir, EXPERIMENT_FILE) if claims is None else "--experiment"
    claims = checked_claims(experiment.get("claims", []) if claims is None else claims, source)
    rows = build_rows(cells, axes)
    columns = attack_columns(rows)
    finished = [c for c in cells if c.status == "finished"]
    failed = [c for c in cells if c.status == "failed"]
    pending = [c for c in cells if c.status == "pending"]
    summaries = [row_summary(r, columns) for r in rows]
    datasets = sorted({str((c.results.get("dataset") or {}).get("name")) for c in finished})
    dataset = ", ".join(datasets) or "no data"

    scalars = load_scalars(finished, problems)
    figures = draw_figures(workdir, rows, scalars, dataset, problems, test_numbers=not validation_only(cells))
    no_curves = [c.name for c in finished if "val_pgd_acc" not in scalars.get(c.name, {})]
    if rows and no_curves:
        problems.append(f"no per-epoch validation curves (tb/frep) for: {', '.join(no_curves)}")

    cost = load_cost(workdir, experiment.get("name"), problems)
    measured = cost_rows(cost) if cost else None
    judged = judge_all(claims, rows, scalars, validation_only(cells), problems, measured)
    text = markdown(
        workdir,
        experiment,
        cells,
        axes,
        rows,
        summaries,
        columns,
        figures,
        problems,
        scalars,
        judged,
        (cost, measured) if cost else None,
    )
    tmp = os.path.join(workdir, "." + REPORT_FILE + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, os.path.join(workdir, REPORT_FILE))
    return {
        "report": os.path.join(workdir, REPORT_FILE),
        "figures": figures,
        "cells": {"total": len(cells), "finished": len(finished), "failed": len(failed), "pending": len(pending)},
        "rows": summaries,
        "claims": judged,
        "failed": [
            {
                "name": c.name,
                "reason": (c.failure or {}).get("reason"),
                "exit_status": (c.failure or {}).get("exit_status"),
            }
            for c in failed
        ],
        "pending": [c.name for c in pending],
        "problems": problems,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m frep_tf.experiments.report WORKDIR", file=sys.stderr)
        return 2
    try:
        summary = write_report(argv[1])
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = summary["cells"]
    print(
        f"[frep_tf] {summary['report']}: {c['finished']} finished, {c['failed']} failed, {c['pending']} pending; "
        f"figures: {', '.join(summary['figures'].values()) or 'none'}"
    )
    return 0
