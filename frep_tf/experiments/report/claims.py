"""The experiment file's claims (`claim LABEL = METRIC: A > B`, frep_tf.experiments.spec), judged on the
finished cells: each side's per-seed values, their mean ± sample std and n, and a verdict; the report's
"Claims" section. No TensorFlow.

Verdict of a claim, from the values a_i of the cells side A selects and b_i of side B's:
    either side has no value       not measured yet
    either side has n < 2          one seed: not judged (the numbers are shown)
    |mean_A - mean_B| <= std_A + std_B (the mean ± std intervals overlap)
                                   inside the seed spread
    otherwise                      holds when mean_A - mean_B has the operator's sign, else does not hold
A side whose cells fall in more than one report row is not judged (the line names the rows); a claim on
a test metric in a validation-only experiment is not evaluated (its test numbers are never shown).

`train_cost` is judged on cost.json's rows (--mode=cost), not on the finished cells: a row's values are its
estimated training seconds in each measurement round, so n counts rounds, the spread is over rounds, and
without cost.json (or without the row in it) the claim is not measured yet.
"""

from __future__ import annotations

from frep_tf.experiments.report.cells import Cell, ReportError, parse_value, same_value
from frep_tf.experiments.report.stats import CostRow, Row, accuracy, mean_std, train_seconds, validation_curves
from frep_tf.experiments.report.tables import pm, row_label, seconds_text

COST = "train_cost"  # judged on cost.json's measurement rounds, not on the cells' seeds
SECONDS = ("train_seconds", COST)  # the claim metrics in seconds
NOT_TEST = ("val_pgd", *SECONDS)  # the claim metrics not measured on test images
ATTACK_TITLES = {
    "clean": "Clean",
    "fgsm": "FGSM",
    "pgd": "PGD",
    "mim": "MIM",
    "square": "Square",
    "autoattack": "AutoAttack",
    "apgd-ce": "APGD-CE",
    "apgd-t": "APGD-T",
    "fab-t": "FAB-T",
}
HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
INSIDE = "inside the seed spread"
ONE_SEED = "one seed: not judged"
INSIDE_ROUNDS = "inside the spread over rounds"
ONE_ROUND = "one round: not judged"
NOT_MEASURED = "not measured yet"
SEVERAL_ROWS = "several rows: not judged"
VALIDATION_ONLY = "not evaluated: test metric in a validation-only experiment"
RULE = (
    "Each claim of the experiment file compares two report rows on one metric, mean ± sample std (ddof 1) over "
    "each row's seeds (accuracies in %, the difference in points): it holds when the difference of the means has "
    "the claimed sign and is larger than the two standard deviations added (the mean ± std intervals do not "
    "overlap), does not hold when it is that large with the other sign, and is inside the seed spread otherwise; "
    "with one seed on either side it is not judged."
)
COST_RULE = (
    "A train_cost claim compares the training cost measured side by side in one process (`--mode=cost`, "
    "cost.json, see Cost): each row's estimated training seconds in every measurement round, so there n counts "
    "rounds, not seeds, and the spread is over rounds."
)


def is_test_metric(metric: str) -> bool:
    return metric not in NOT_TEST


def metric_title(metric: str) -> str:
    if metric == "val_pgd":
        return "PGD, validation, last epoch, %"
    if metric == "train_seconds":
        return "train time, s"
    if metric == COST:
        return "train cost measured side by side, s"
    return f"{ATTACK_TITLES.get(metric, metric)}, test, %"


def selector_text(selector: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in selector.items())


def written_setting(cell: Cell, flag: str):
    """A flag's value as the experiment file wrote it (experiment.json's cell flags), else the cell's
    setting: a selector speaks the file's terms, and config.json may hold a resolved value (--epochs=100
    with --epoch_scale=0.3 is stored as epochs 30 and epoch_scale 1)."""
    written = cell.flags.get(flag)
    return parse_value(written) if written is not None else cell.setting(flag)


def matches(cell: Cell, selector: dict) -> bool:
    """Every flag=value of the selector is the cell's value of that flag (numbers within a tolerance)."""
    return all(same_value(written_setting(cell, flag), parse_value(str(value))) for flag, value in selector.items())


def cell_value(cell: Cell, metric: str, scalars: dict) -> float | None:
    if metric == "val_pgd":
        curves = validation_curves(cell, scalars)
        return curves["last"] if curves else None
    if metric == "train_seconds":
        return train_seconds(cell)
    return accuracy(cell.results or {}, metric)


def checked_claims(claims, source: str) -> list[dict]:
    """The claims as experiment.json (or a parsed file) holds them; ReportError (one line) if damaged."""
    if not isinstance(claims, list):
        raise ReportError(f"{source}: 'claims' is not a list")
    for i, claim in enumerate(claims):
        ok = isinstance(claim, dict) and all(k in claim for k in ("label", "metric", "op", "a", "b"))
        if (
            not ok
            or claim["op"] not in (">", "<")
            or not isinstance(claim["a"], dict)
            or not isinstance(claim["b"], dict)
        ):
            raise ReportError(f"{source}: claims[{i}] is not {{label, metric, op (> or <), a {{}}, b {{}}, line}}")
    return claims


def _side(selector: dict, rows: list[Row], metric: str, scalars: dict) -> dict:
    chosen = [(row, [c for c in row.cells if matches(c, selector)]) for row in rows]
    chosen = [(row, cells) for row, cells in chosen if cells]
    cells = [c for _, cells in chosen for c in cells]
    mean, std, n = mean_std(cell_value(c, metric, scalars) for c in cells)
    return {
        "selector": selector_text(selector),
        "rows": [row_label(row) for row, _ in chosen],
        "cells": [c.name for c in cells],
        "mean": mean if n else None,
        "std": std,
        "n": n,
    }


def _cost_side(selector: dict, cost: list[CostRow] | None) -> dict:
    """A train_cost side: the cost.json rows the selector picks, the values their per-round totals."""
    chosen = [c for c in cost or [] if any(matches(cell, selector) for cell in c.row.cells)]
    mean, std, n = mean_std(t for c in chosen for t in c.totals)
    return {
        "selector": selector_text(selector),
        "rows": [row_label(c.row) for c in chosen],
        "cells": [name for c in chosen for name in c.entry["cells"]],
        "mean": mean if n else None,
        "std": std,
        "n": n,
        "measured": cost is not None,
    }


def judge(
    claim: dict, rows: list[Row], scalars: dict, validation_only: bool, cost: list[CostRow] | None = None
) -> dict:
    """{label, metric, op, line, a, b (each {selector, rows, cells, mean, std, n}), difference, verdict, text}."""
    metric, op = claim["metric"], claim["op"]
    out = {k: claim.get(k) for k in ("label", "metric", "op", "line")}
    if validation_only and is_test_metric(metric):
        # Not even the matched cells' numbers: a validation-only experiment's test numbers stay unseen.
        out.update(a=None, b=None, difference=None, verdict=VALIDATION_ONLY)
        out["text"] = _line(claim, VALIDATION_ONLY + " (its settings are chosen on the validation split)")
        return out
    if metric == COST:  # `cost`: cost.json's rows (None: no cost.json)
        a, b = (_cost_side(claim[k], cost) for k in ("a", "b"))
    else:
        a, b = (_side(claim[k], rows, metric, scalars) for k in ("a", "b"))
    out.update(a=a, b=b, difference=None)
    several = [(name, s) for name, s in (("first", a), ("second", b)) if len(s["rows"]) > 1]
    if several:
        out["verdict"] = SEVERAL_ROWS
        out["text"] = _line(
            claim,
            "not judged: "
            + "; ".join(
                f"the {name} selector (`{s['selector']}`) matches {len(s['rows'])} report rows ({'; '.join(s['rows'])})"
                for name, s in several
            )
            + ", where a side must select one row",
        )
        return out
    sides = f"{_side_text(a, metric)} vs {_side_text(b, metric)}"
    if not a["n"] or not b["n"]:
        out["verdict"] = NOT_MEASURED
        out["text"] = _line(claim, f"{sides}: {NOT_MEASURED}")
        return out
    d = a["mean"] - b["mean"]
    out["difference"] = d
    if metric == COST:
        diff = f"difference {'+' if d >= 0 else '-'}{seconds_text(abs(d))} s"
    elif metric in SECONDS:
        diff = f"difference {d:+.1f} s"
    else:
        diff = f"difference {100 * d:+.1f} points"
    if a["n"] < 2 or b["n"] < 2:
        verdict = ONE_ROUND if metric == COST else ONE_SEED
    elif abs(d) <= a["std"] + b["std"]:
        verdict = INSIDE_ROUNDS if metric == COST else INSIDE
    else:
        verdict = HOLDS if (d > 0) == (op == ">") else DOES_NOT_HOLD
    out["verdict"] = verdict
    out["text"] = _line(claim, f"{sides}, {diff}: {verdict}")
    return out


def _side_text(side: dict, metric: str) -> str:
    if side["rows"]:
        name = f"*{side['rows'][0]}*"
    else:
        name = f"`{side['selector']}`"
    if metric == COST and not side["n"]:
        return f"{name} (" + ("no row of cost.json" if side["measured"] else "no cost.json: see --mode=cost") + ")"
    if not side["cells"]:
        return f"{name} (no finished cell)"
    if not side["n"]:
        return f"{name} (no {metric} value in its {len(side['cells'])} finished cell(s))"
    if metric == COST:
        return f"{name} {seconds_text(side['mean'], side['std'])} (n = {side['n']} rounds)"
    scale = 1.0 if metric in SECONDS else 100.0
    return f"{name} {pm(side['mean'], side['std'], scale)} (n = {side['n']})"


def _line(claim: dict, body: str) -> str:
    higher = "higher" if claim["op"] == ">" else "lower"
    return f"- **{claim['label']}** ({metric_title(claim['metric'])}; claimed {higher}): {body}."


def judge_all(
    claims: list[dict],
    rows: list[Row],
    scalars: dict,
    validation_only: bool,
    problems: list[str],
    cost: list[CostRow] | None = None,
):
    """Every claim judged (train_cost on `cost`, cost.json's rows; None: no cost.json); a side matching
    several rows is also a note of the report."""
    judged = [judge(c, rows, scalars, validation_only, cost) for c in claims]
    for j in judged:
        if j["verdict"] == SEVERAL_ROWS:
            line = f" (experiment file line {j['line']})" if j.get("line") else ""
            problems.append(f"claim {j['label']!r}{line}: a selector matches several report rows; see Claims")
    return judged


def claims_section(judged: list[dict]) -> list[str]:
    """report.md's Claims section ([] when the experiment states no claim)."""
    if not judged:
        return []
    rule = f"{RULE} {COST_RULE}" if any(j["metric"] == COST for j in judged) else RULE
    return ["## Claims", "", rule, "", *[j["text"] for j in judged], ""]
