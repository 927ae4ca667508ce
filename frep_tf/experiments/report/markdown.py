"""report.md's text, section by section: the experiment and its cells, robust accuracy, the claims,
sparsity measures, validation, figures, cost, failed and pending cells, notes. A validation-only experiment
(every cell evaluated with `--eval_attacks=clean`) leads with its validation section and shows no test
number."""

from __future__ import annotations

import os

from frep_tf.experiments.report.cells import Cell
from frep_tf.experiments.report.claims import claims_section
from frep_tf.experiments.report.figures import FIGURES
from frep_tf.experiments.report.stats import CostRow, Row, common_settings, kept_per_layer, validation_only
from frep_tf.experiments.report.tables import (
    cost_table,
    has_settings_column,
    layer_table,
    measured_cost_table,
    measures_table,
    per_cell_table,
    robust_table,
    sparsity_label,
    table_notes,
    validation_table,
)
from frep_tf.workdir import CELLS_DIR, EXPERIMENT_FILE

FIGURE_CAPTIONS = {
    "fig8": "Robust accuracy vs target sparsity, mean ± std over seeds (paper Fig. 8); an IWI row sits "
    "at 0 % (the network it trains is dense; its --sparsity is the source network's).",
    "fig7": "Distribution of the exported (fused) kernel weights, log10 |w| of the non-zero ones; "
    "exact zeros are counted in the legend (paper Fig. 7).",
    "layers": "The fraction of each prunable layer's weights that each method kept (log scale; layers in "
    "network order) at each target sparsity, mean over seeds (error bars: the seeds' range, where a row has "
    "more than one), against the global kept fraction 1 - sparsity (dashed).",
    "fig5": "Validation PGD accuracy per epoch of the network and of its temporal ensemble, and the "
    "ensemble divergence Delta (paper Eq. 14), mean over seeds (paper Fig. 5).",
    "lipschitz": "Test robust accuracy against the mean L1 norm of the input gradient of the margin, "
    "one point per finished cell (the second paper's Lipschitz argument for sparsity).",
}


VALIDATION_ONLY_NOTE = (
    "Validation-only experiment: its cells were evaluated on clean test images only, as a sanity check "
    "(`--eval_attacks=clean`), and the test numbers are left out of this report because its settings are "
    "chosen on the validation split."
)


def markdown(
    workdir, experiment, cells, axes, rows, summaries, columns, figures, problems, scalars=None, claims=None, cost=None
) -> str:
    """The whole of report.md; `scalars` {cell name: {tag: {epoch: value}}} feed the validation section,
    `claims` (judged, frep_tf.experiments.report.claims) the Claims section after the first table, `cost`
    (cost.json and its rows, stats.cost_rows) the Cost section's side-by-side table."""
    finished = [c for c in cells if c.status == "finished"]
    out = _header(workdir, experiment, cells, axes)
    validation = validation_table(rows, scalars or {})
    if validation_only(cells):
        out += [VALIDATION_ONLY_NOTE, ""]
        out += validation
        out += claims_section(claims or [])
        out += ["## Exported models", ""]
        out += (
            _robust_section(rows, summaries, [], finished, test_numbers=False)
            if rows
            else ["No cell has finished yet.", ""]
        )
        out += measures_table(rows, test_numbers=False)
    else:
        out += ["## Robust accuracy (paper Tables I / IV)", ""]
        out += _robust_section(rows, summaries, columns, finished) if rows else ["No cell has finished yet.", ""]
        out += claims_section(claims or [])
        out += measures_table(rows)
        out += validation
    out += _figures_section(workdir, figures, rows)
    if rows or cost:
        out += _cost_section(rows, summaries, finished, cost)
    out += _status_sections(cells, problems)
    return "\n".join(out)


def checkout_relative(path: str) -> str:
    """An absolute path inside a frep_tf checkout (any clone or worktree: the nearest parent holding
    main.py and frep_tf/) relative to that checkout, so a report reads the same wherever it was made;
    other paths as they are."""
    if not os.path.isabs(path):
        return path
    parent = os.path.dirname(path)
    while parent != os.path.dirname(parent):
        if os.path.isfile(os.path.join(parent, "main.py")) and os.path.isdir(os.path.join(parent, "frep_tf")):
            return os.path.relpath(path, parent)
        parent = os.path.dirname(parent)
    return path


def _relative_flag(flag: str) -> str:
    name, sep, value = flag.partition("=")
    return f"{name}={checkout_relative(value)}" if sep and name == "--flagfile" else flag


def _header(workdir, experiment: dict, cells: list[Cell], axes) -> list[str]:
    """The title, the experiment file and its axes, the flags every cell has, and how many cells finished."""
    finished = [c for c in cells if c.status == "finished"]
    failed = [c for c in cells if c.status == "failed"]
    pending = [c for c in cells if c.status == "pending"]
    name = experiment.get("name") or os.path.basename(os.path.abspath(workdir))
    out = [f"# Experiment report: {name}", ""]
    source = f"`{checkout_relative(experiment['file'])}`" if experiment.get("file") else None
    if experiment:
        out.append(f"Experiment {source or EXPERIMENT_FILE}; " + _axes_text(axes) + ".")
    else:
        out.append(f"No {EXPERIMENT_FILE}: cells found as `{CELLS_DIR}/*/config.json`; " + _axes_text(axes) + ".")
    flags = [*experiment.get("base_flags", []), *experiment.get("command_line_flags", [])]
    if flags:
        out.append("Every cell: " + " ".join(f"`{_relative_flag(f)}`" for f in flags) + ".")
    started = sum(1 for c in pending if c.started)
    out.append(
        f"Cells: {len(cells)} — {len(finished)} finished, {len(failed)} failed, {len(pending)} pending"
        + (f" ({started} started)" if started else "")
        + ". This report covers the finished ones; rebuild it as more finish "
        "(`python main.py --mode=report --workdir=<this directory>`)."
    )
    out.append("")
    return out


def _axes_text(axes) -> str:
    if not axes:
        return "no axes (all cells share their settings)"
    return "axes: " + "; ".join(f"{flag} = {', '.join(str(v) for v in values)}" for flag, values in axes)


def _robust_section(
    rows: list[Row], summaries: list[dict], columns, finished: list[Cell], test_numbers: bool = True
) -> list[str]:
    """The accuracy table, what it measured, the settings rows share, and cells whose sanity checks failed;
    without `test_numbers`, the table without its accuracy columns (the deployed size and sparsity)."""
    out = robust_table(rows, summaries, columns)
    if test_numbers:
        out += [""] + table_notes(finished, columns) + [""]
    else:
        out += [
            "",
            "n: the seeds of a row. Deployed size: the smallest exported file (mean over seeds). Measured "
            "sparsity: exact zeros among the exported Conv2D/Dense kernel weights, mean ± sample std over seeds.",
            "",
        ]
    common = common_settings(rows)
    if has_settings_column(rows) and common:
        out += [
            "Settings: what sets a row apart; a row that does not name a setting has "
            + ", ".join(f"{k}={v}" for k, v in common.items())
            + "."
            + (" epochs: the epochs trained (after --epoch_scale)." if "epochs" in rows[0].others else ""),
            "",
        ]
    return out + sanity_lines(finished)


# What a failed check means, for the checks a finished proving-ground cell has failed.
SANITY_MEANING = {
    "square_in_autoattack": "Square, run after the white-box attacks, still broke points: gradients are partly "
    "masked, and the white-box columns overstate robustness (AA includes Square)",
    "zero_gradients": "the input gradient is exactly zero at some test points: gradient attacks cannot move them",
    "black_box": "a black-box attack beat every white-box one",
    "order": "a stronger attack left more points robust than a weaker one",
    "eps_sweep": "accuracy does not fall to zero as epsilon grows",
}


def failed_checks(cell) -> list[tuple[str, str]]:
    """(check, where) for each sanity check a cell failed: where is "" for its main evaluation and
    " (AutoAttack subset)" for the evaluation on the AutoAttack subset, which the run's verdict covers."""
    evaluation = cell.results.get("evaluation") or {}
    failed = []
    for where, ev in (("", evaluation), (" (AutoAttack subset)", evaluation.get("autoattack_subset") or {})):
        checks = (ev.get("sanity") or {}).get("checks") or {}
        failed += [(k, where) for k, v in checks.items() if k != "autoattack_subset" and v.get("passed") is False]
    return failed


def sanity_lines(finished) -> list[str]:
    """The finished cells whose sanity checks failed, grouped by the check that failed and what it means
    (a failed verdict without a failed check is listed as such)."""
    by_check: dict[tuple[str, str], list[str]] = {}
    for cell in finished:
        if ((cell.results.get("evaluation") or {}).get("sanity") or {}).get("passed") is not False:
            continue
        for key in failed_checks(cell) or [("", "")]:
            by_check.setdefault(key, []).append(cell.name)
    if not by_check:
        return []
    out = ["Sanity checks failed (each cell's results.json, `evaluation.sanity`):", ""]
    for (check, where), cells in by_check.items():
        what = f"`{check}`{where}" if check else "failed, no check named"
        if check in SANITY_MEANING:
            what += f": {SANITY_MEANING[check]}"
        plural = "s" if len(cells) > 1 else ""
        out.append(f"- {what}; {len(cells)} cell{plural}: {', '.join(f'`{c}`' for c in cells)}.")
    return out + [""]


def _figures_section(workdir: str, figures: dict[str, str], rows: list[Row]) -> list[str]:
    if not figures:
        return []
    out = ["## Figures", ""]
    for key in ("fig8", "fig7", "layers", "fig5", "lipschitz"):
        if key in figures:
            rel = os.path.relpath(figures[key], workdir)
            out += [f"![{FIGURES[key]}]({rel})", "", FIGURE_CAPTIONS[key], ""]
        if key == "layers" and key in figures:
            out += _kept_per_layer(rows)
    return out


def _kept_per_layer(rows: list[Row]) -> list[str]:
    """The numbers behind the per-layer figure: a table per target sparsity it shows."""
    out = []
    for panel in kept_per_layer(rows)[0]:
        out += [f"Kept per layer, target sparsity {sparsity_label(panel.sparsity, panel.structured)}:", ""]
        out += layer_table(panel)
        out.append("")
    out += [
        "Weights: the layer's kernel weights (pruning.layers in results.json); per row the kept count, mean ± std "
        "over seeds (n where more than one), and the mean kept fraction; *all*: the layers added up.",
        "",
    ]
    return out


def _cost_section(
    rows: list[Row], summaries: list[dict], finished: list[Cell], cost: tuple[dict, list[CostRow]] | None
) -> list[str]:
    out = ["## Cost (paper Table V)", ""]
    if cost:
        out += _measured_cost(*cost)
    if not rows:
        return out
    if cost:
        out += ["### Wall time of the cells", ""]
    out += cost_table(rows, summaries)
    total = sum((c.results.get("timings") or {}).get("total", 0) for c in finished)
    out += [
        "",
        f"Wall time, mean ± std over seeds; all {len(finished)} finished cells together: {total / 3600:.2f} h. "
        "Train time is the method's stages summed over every process that ran them (results.json "
        "`method.seconds`; older results: the finishing process only); Train / FReP divides by the FReP row "
        "at the same sparsity; peak RSS is the process's resident-memory high-water mark (ru_maxrss). "
        "Total is the finishing process's wall time (a cell resumed after a kill is marked *resumed*). "
        + (
            "Each cell's times are those of the load it ran under: compare methods by the side-by-side "
            "measurement above, not by these."
            if cost
            else "Each cell's times are those of the load it ran under: on a shared machine, compare methods "
            "by their training cost from `--mode=cost`, not by these."
        ),
        "",
    ]
    out += ["Per cell:", ""]
    out += per_cell_table(rows)
    out.append("")
    return out


def _measured_cost(cost: dict, cost_rows: list[CostRow]) -> list[str]:
    """The table of cost.json (--mode=cost) and what it measured, where and how."""
    machine = cost.get("machine") or {}
    load = machine.get("load_average") or {}
    if load.get("start") and load.get("end"):
        load_text = f"; load average {load['start'][0]:g} at the start, {load['end'][0]:g} at the end"
    else:
        load_text = ""
    out = ["### Training cost measured side by side", ""]
    out += measured_cost_table(cost_rows)
    out += [
        "",
        f"Measured by `python main.py --mode=cost` on {cost.get('date', '?')} (commit {cost.get('commit', '?')}; "
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} CPU cores{load_text}; TensorFlow "
        f"{cost.get('tensorflow', '?')}): "
        f"{cost['rounds']} rounds; in each, every row's every stage in turn ran {cost['steps']} optimizer steps "
        f"(a pass over the data: {cost['steps']} batches), after an untimed warm-up. "
        + " ".join(str(cost[k]) for k in ("measured", "left_out") if cost.get(k))
        + " Est. train: the sum over a row's stages of epochs × steps per epoch × seconds per step, in each round. "
        "ms per step, Est. train and Train / FReP are mean ± sample std over the rounds; Train / FReP is taken "
        "round by round against the FReP row at the same sparsity (within a round the rows run back to back, under "
        "the same load), then averaged. Unlike the cells' wall times, these compare from row to row.",
        "",
    ]
    return out


def _status_sections(cells: list[Cell], problems: list[str]) -> list[str]:
    """Failed cells with their reasons, pending cells, and the notes gathered while reading."""
    failed = [c for c in cells if c.status == "failed"]
    pending = [c for c in cells if c.status == "pending"]
    out = []
    if failed:
        out += ["## Failed cells", ""]
        for c in failed:
            f = c.failure or {}
            status = f.get("exit_status")
            reason = " ".join(str(f.get("reason") or "no reason recorded").split())
            out.append(f"- `{c.name}`: {reason}" + (f" (exit status {status})" if status is not None else ""))
        out.append("")
    if pending:
        out += ["## Pending cells", ""]
        out.append(f"{len(pending)} cell(s) not finished: " + ", ".join(f"`{c.name}`" for c in pending) + ".")
        out.append("")
    if problems:
        out += ["## Notes", ""] + [f"- {p}" for p in problems] + [""]
    return out
