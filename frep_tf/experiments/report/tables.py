"""The report's Markdown tables: robust accuracy (paper Tables I / IV), sparsity measures, validation
accuracy per epoch, what each row kept per layer, cost (paper Table V), the training cost measured side by
side (cost.json) and per-cell timings, with the number formatting they share."""

from __future__ import annotations

import os

from frep_tf.experiments.report.cells import Cell, sort_key
from frep_tf.experiments.report.stats import (
    REPLICATE_AXIS,
    VALIDATION_EPOCHS,
    CostRow,
    LayerPanel,
    Row,
    is_iwi,
    mean_std,
    measures,
    train_seconds,
    validation_curves,
)


def pm(mean: float, std: float | None, scale: float = 1.0, digits: int = 1) -> str:
    if mean != mean:  # nan
        return "-"
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def seconds_text(mean: float, std: float | None = None) -> str:
    """Seconds with the digits their size needs: 12,345 / 12.3 / 0.123 (± the std alike)."""
    size = abs(mean)
    digits = 0 if size >= 100 else 1 if size >= 1 else 3
    text = f"{mean:,.{digits}f}"
    return text if std is None else f"{text} ± {std:,.{digits}f}"


def sparsity_label(sparsity, structured: bool) -> str:
    if sparsity is None:
        return "-"
    text = f"{100 * float(sparsity):g} %"
    return f"{text} channels" if structured else text


def row_sparsity(row: Row) -> str:
    """A row's sparsity as its tables name it; an IWI row trains a dense network, and its --sparsity is its
    source's: "0 % (from a 90 % source)"."""
    text = sparsity_label(row.sparsity, row.structured)
    return f"0 % (from a {text} source)" if is_iwi(row) else text


def row_label(row: Row) -> str:
    parts = [row.method, row_sparsity(row)]
    parts += [f"{k}={v}" for k, v in row.shown.items()]
    return ", ".join(parts)


def _bytes(n: float) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def md_table(header: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def robust_table(rows: list[Row], summaries: list[dict], columns) -> list[str]:
    """Markdown lines: a row per table row, its accuracy under each attack, deployed size and sparsity."""
    extra = list(rows[0].others)
    settings_column = has_settings_column(rows)
    header = [
        "Method",
        "Sparsity",
        *(["Settings"] if settings_column else extra),
        *[t for _, t in columns],
        "n",
        "Deployed size",
        "Measured sparsity",
    ]
    body = []
    for row, s in zip(rows, summaries, strict=True):
        line = [row.method, row_sparsity(row)]
        if settings_column:
            line.append(", ".join(f"{k}={v}" for k, v in row.shown.items()) or "-")
        else:
            line += [str(row.others[k]) for k in extra]
        line += [_accuracy_cell(s, attack) for attack, _ in columns]
        line.append(str(s["n"]))
        d = s["deployed_bytes"]
        line.append(f"{_bytes(d['mean'])} (`{os.path.basename(d['file'])}`)" if d else "-")
        m = s["measured_sparsity"]
        line.append(pm(m["mean"], m["std"], 100, 2) + " %" if m else "-")
        body.append(line)
    align = ["l", "l", *["l"] * (1 if settings_column else len(extra)), *["r"] * len(columns), "r", "r", "r"]
    return md_table(header, body, align)


def has_settings_column(rows: list[Row]) -> bool:
    """Up to two other axes get a column each; more (a grid listing many flags per cell) get one Settings
    column with what sets each row apart (Row.shown)."""
    return len(rows[0].others) > 2


def _accuracy_cell(summary: dict, attack: str) -> str:
    a = summary["accuracy"].get(attack)
    text = pm(a["mean"], a["std"], 100) if a else "-"
    if a and a["n"] != summary["n"]:
        text += f" (n={a['n']})"
    return text


def table_notes(finished: list[Cell], columns) -> list[str]:
    samples = {}
    for attack, title in columns:
        counts = sorted(
            {
                e.get("samples")
                for c in finished
                if isinstance(e := (c.results.get("evaluation") or {}).get(attack), dict)
            }
            - {None}
        )
        samples.setdefault(" / ".join(map(str, counts)), []).append(title)
    if len(samples) == 1:
        images = f"{next(iter(samples))} test images"
    else:  # e.g. AutoAttack on a fixed subset
        images = "test images (" + "; ".join(f"{', '.join(t)}: {n}" for n, t in samples.items()) + ")"
    eps = sorted({((c.results.get("evaluation") or {}).get("config") or {}).get("epsilon") for c in finished} - {None})
    datasets = sorted({str((c.results.get("dataset") or {}).get("name")) for c in finished})
    evaluated = sorted({str((c.results.get("model") or {}).get("evaluated_path")) for c in finished})
    return [
        f"Accuracy (%) of the exported model ({', '.join(f'`{e}`' for e in evaluated)}) on {images} of "
        f"{', '.join(datasets)}, epsilon {', '.join(f'{e:.4g}' for e in eps)}; mean ± sample std (ddof 1) over "
        "the n seeds of a row (no ± for n = 1). Deployed size: the smallest exported file (mean over seeds). "
        "Measured sparsity: exact zeros among the exported Conv2D/Dense kernel weights."
    ]


def measures_table(rows: list[Row], test_numbers: bool = True) -> list[str]:
    """Markdown lines: per row, the sparsity measures next to validation and test robustness ([] if no
    finished cell recorded them). Without `test_numbers` (a validation-only experiment) the columns measured
    on test images (input-gradient L1, test robust accuracy) are left out."""
    if not any(measures(c)["near_zero"] is not None for r in rows for c in r.cells):
        return []
    body = []
    for row in rows:
        m = [measures(c) for c in row.cells]
        cols = [pm(*mean_std(x[k] for x in m)[:2], 100) for k in ("zero", "near_zero")]
        if test_numbers:
            cols.append(pm(*mean_std(x["input_gradient_l1"] for x in m)[:2], 1, 2))
        cols.append(pm(*mean_std(x["val_pgd"] for x in m)[:2], 100))
        if test_numbers:
            attacks = sorted({x["robust_attack"] for x in m if x["robust"] is not None})
            robust = pm(*mean_std(x["robust"] for x in m)[:2], 100)
            cols.append(f"{robust} ({'/'.join(attacks)})" if attacks else "-")
        body.append([row_label(row), str(len(row.cells)), *cols])
    near = sorted(
        {(c.results.get("sparsity_measures") or {}).get("near_zero_relative") for r in rows for c in r.cells} - {None}
    )
    val = sorted({(c.results.get("dataset") or {}).get("num_val") for r in rows for c in r.cells} - {None})
    header = ["Row", "n", "Exact zeros (%)", "Near-zero (%)"]
    header += ["Input-gradient L1"] if test_numbers else []
    header += ["Val. PGD, last epoch (%)"]
    header += ["Test robust (%)"] if test_numbers else []
    zeros = (
        "Of the exported Conv2D / Dense kernels: exact zeros, and near-zero weights (|w| <= "
        f"{' / '.join(f'{x:g}' for x in near) or '?'} x the layer's max |w|); "
    )
    gradient = (
        "input-gradient L1: mean L1 norm of the gradient of the margin (true-class logit minus the largest other) "
        "with respect to the input at test points, a local Lipschitz proxy (lower = flatter); "
    )
    validation = (
        "Val. PGD: the last epoch's validation PGD accuracy (`--val_pgd_steps`, on `--val_samples` of the "
        f"{' / '.join(map(str, val)) or '?'} held-out training images: what a choice between settings may be "
        "made on)"
    )
    return [
        "## Sparsity measures and robustness" if test_numbers else "## Sparsity measures",
        "",
        *md_table(header, body, ["l", *["r"] * (len(header) - 1)]),
        "",
        zeros
        + gradient
        + validation
        + "; Test robust: AutoAttack where the cell ran it, else PGD. Mean ± std over seeds."
        if test_numbers
        else zeros + validation + ". Mean ± std over seeds.",
        "",
    ]


def series_label(row: Row) -> str:
    """A row's label among rows of its sparsity: the method and the settings that set it apart."""
    return ", ".join(
        [row.method + (" (structured)" if row.structured else ""), *[f"{k}={v}" for k, v in row.shown.items()]]
    )


def percent(fraction: float) -> str:
    """A kept fraction as a percentage, three significant digits (0.514 %, 37.6 %, 100 %)."""
    return f"{100 * fraction:.3g} %"


def layer_table(panel: LayerPanel) -> list[str]:
    """Markdown lines: per layer (network order), its weights and, per row, the kept count (mean ± std over
    seeds) and kept fraction (mean); the last line adds the layers up."""
    body = []
    for name in panel.layers:
        totals = sorted({kept[name].total for _, kept in panel.series if name in kept})
        line = [f"`{name}`", " / ".join(f"{t:,}" for t in totals)]
        for _, kept in panel.series:
            k = kept.get(name)
            std = f" ± {k.kept_std:,.0f}" if k and k.kept_std is not None else ""
            line.append(f"{k.kept:,.0f}{std} ({percent(k.fraction)})" if k else "-")
        body.append(line)
    totals = [sum(kept[name].total for name in panel.layers if name in kept) for _, kept in panel.series]
    line = ["all", " / ".join(f"{t:,}" for t in sorted(set(totals)))]
    for total, (_, kept) in zip(totals, panel.series, strict=True):
        count = sum(kept[name].kept for name in panel.layers if name in kept)
        line.append(f"{count:,.0f} ({percent(count / total)})")
    body.append(line)
    header = [
        "Layer",
        "Weights",
        *[series_label(row) + (f" (n={_n(kept)})" if _n(kept) > 1 else "") for row, kept in panel.series],
    ]
    return md_table(header, body, ["l", "r", *["r"] * len(panel.series)])


def _n(kept: dict) -> int:
    return max(k.n for k in kept.values())


def cost_table(rows: list[Row], summaries: list[dict]) -> list[str]:
    """Markdown lines: per table row, its stages, epochs, train time (and its ratio to FReP's at the same
    sparsity), train time per epoch, peak memory and total wall time."""
    frep_train = {
        sort_key(r.sparsity): s["seconds_train"]["mean"]
        for r, s in zip(rows, summaries, strict=True)
        if r.method == "FReP" and not r.structured and s["seconds_train"]
    }
    body = []
    for row, s in zip(rows, summaries, strict=True):
        t, tr, ep, peak = s["seconds_total"], s["seconds_train"], s["epochs"], s["peak_rss_mb"]
        per_epoch = mean_std(
            (train_seconds(c) or 0) / max((c.results.get("training") or {}).get("epochs") or 1, 1) for c in row.cells
        )
        reference = frep_train.get(sort_key(row.sparsity))
        ratio = f"{tr['mean'] / reference:.2f}" if tr and reference else "-"
        body.append(
            [
                row_label(row),
                str(s["n"]),
                s["stages"] or "-",
                pm(ep["mean"], ep["std"] or None, 1, 0) if ep else "-",
                pm(tr["mean"], tr["std"]) if tr else "-",
                ratio,
                pm(per_epoch[0], per_epoch[1], 1, 2),
                pm(peak["mean"], peak["std"] or None, 1, 0) if peak else "-",
                pm(t["mean"], t["std"]) if t else "-",
            ]
        )
    return md_table(
        [
            "Row",
            "n",
            "Stages (epochs)",
            "Epochs",
            "Train (s)",
            "Train / FReP",
            "Train s / epoch",
            "Peak RSS (MiB)",
            "Total (s)",
        ],
        body,
        ["l", "r", "l", "r", "r", "r", "r", "r", "r"],
    )


def measured_cost_table(cost: list[CostRow]) -> list[str]:
    """Markdown lines: per cost.json row, its stages and epochs, milliseconds per step of each stage, the
    estimated training seconds and the ratio to the FReP row at the same sparsity (taken per round), each
    mean ± sample std over the measurement rounds."""
    body = []
    for c in cost:
        stages = c.entry["stages"]
        per_step = [mean_std(s["seconds_per_step"]) for s in stages]
        ms = "; ".join(f"{s['name']} {pm(m, sd, 1000.0)}" for s, (m, sd, _) in zip(stages, per_step, strict=True))
        total = mean_std(c.totals)
        if c.reference is c:
            ratio = "1 (reference)"
        elif c.ratios:
            ratio = pm(*mean_std(c.ratios)[:2], 1.0, 2)
        else:
            ratio = "-"
        body.append(
            [
                row_label(c.row),
                " + ".join(f"{s['name']} {s['epochs']}" for s in stages),
                ms,
                seconds_text(total[0], total[1]),
                ratio,
            ]
        )
    return md_table(
        ["Row", "Stages (epochs)", "ms per step", "Est. train (s)", "Train / FReP"], body, ["l", "l", "l", "r", "r"]
    )


def per_cell_table(rows: list[Row]) -> list[str]:
    """Markdown lines: every finished cell, its row, seed, epochs and times (*resumed* after a kill)."""
    body = []
    for row in rows:
        for c in row.cells:
            timings = c.results.get("timings") or {}
            epochs = (c.results.get("training") or {}).get("epochs")
            body.append(
                [
                    f"`{c.name}`" + (" *resumed*" if c.resumed else ""),
                    row_label(row),
                    str(c.setting(REPLICATE_AXIS)),
                    str(epochs if epochs is not None else "-"),
                    f"{train_seconds(c):.1f}" if train_seconds(c) is not None else "-",
                    f"{timings['total']:.1f}" if "total" in timings else "-",
                ]
            )
    return md_table(["Cell", "Row", "Seed", "Epochs", "Train (s)", "Total (s)"], body, ["l", "l", "r", "r", "r", "r"])


def validation_table(rows: list[Row], scalars: dict) -> list[str]:
    """Markdown lines: the section "Validation (the split settings are chosen on)", a line per table row with
    the validation PGD accuracy of the exported weights' model after epochs 1, 3 and 9, at the last epoch
    and at the best one, the clean accuracy at the last epoch, and the epochs the catastrophic-overfitting
    guard flagged ([] if no finished cell has per-epoch validation scalars)."""
    curves = [[v for c in row.cells if (v := validation_curves(c, scalars)) is not None] for row in rows]
    if not any(curves):
        return []
    models = {v["model"] for found in curves for v in found}
    body = []
    for row, found in zip(rows, curves, strict=True):
        n = len(found)

        def cell(values, n=n):
            m, s, k = mean_std(values)
            return pm(m, s, 100) + (f" (n={k})" if 0 < k < n else "")

        label = row_label(row)
        if len(models) > 1 and found:
            label += " (" + " / ".join(sorted({v["model"] for v in found})) + ")"
        body.append(
            [
                label,
                str(n),
                *[cell(v["epochs"][e] for v in found) for e in VALIDATION_EPOCHS],
                cell(v["last"] for v in found),
                cell(v["best"] for v in found),
                " / ".join(str(v["best_epoch"]) for v in found) or "-",
                cell(v["clean"] for v in found),
                " / ".join(str(v["guard"]) for v in found) or "-",
            ]
        )
    if models == {"ensemble"}:
        which = "the temporal ensemble (`val_ensemble_pgd_acc`, `val_ensemble_clean_acc`) in every row"
    elif models == {"network"}:
        which = "the network (`val_pgd_acc`, `val_clean_acc`; no temporal ensemble) in every row"
    else:
        which = (
            "the temporal ensemble (`val_ensemble_pgd_acc`, `val_ensemble_clean_acc`) in the rows marked "
            "*ensemble*, the network (`val_pgd_acc`, `val_clean_acc`) in those marked *network*"
        )
    last = sorted({v["last_epoch"] for found in curves for v in found})
    cells = [c for row in rows for c in row.cells]
    steps = sorted({c.setting("val_pgd_steps") for c in cells} - {None}, key=sort_key)
    samples = sorted({c.setting("val_samples") for c in cells} - {None}, key=sort_key)
    val = sorted({(c.results.get("dataset") or {}).get("num_val") for c in cells} - {None})
    epochs = ", ".join(map(str, VALIDATION_EPOCHS[:-1])) + f" and {VALIDATION_EPOCHS[-1]}"
    return [
        "## Validation (the split settings are chosen on)",
        "",
        *md_table(
            [
                "Row",
                "n",
                *[f"PGD, epoch {e} (%)" for e in VALIDATION_EPOCHS],
                "PGD, last (%)",
                "PGD, best (%)",
                "Best epoch",
                "Clean, last (%)",
                "Catastrophic overfitting (epochs)",
            ],
            body,
            ["l", "r", *["r"] * len(VALIDATION_EPOCHS), "r", "r", "r", "r", "r"],
        ),
        "",
        "Accuracy (%) on the validation split of the exported weights' model: "
        f"{which}. PGD with `--val_pgd_steps` ({' / '.join(map(str, steps)) or '?'}) steps on `--val_samples` "
        f"({' / '.join(map(str, samples)) or '?'}) of the {' / '.join(map(str, val)) or '?'} held-out training "
        f"images, after epochs {epochs} (1-based; - where a cell trained fewer epochs), at the last epoch "
        f"({' / '.join(map(str, last))}) and at the best epoch (the highest value over all epochs, any before a "
        "prune included; Best epoch: each seed's, first on a tie); Clean: at the last epoch. Mean ± sample std "
        "(ddof 1) over the n seeds of a row (no ± for n = 1; (n=k) where fewer cells reached that epoch). "
        "Catastrophic overfitting: the collapses the guard finds in each seed's validation PGD and training "
        "adversarial accuracy, by its current rule (frep_tf/training/overfitting.py).",
        "",
    ]
