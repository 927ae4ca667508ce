"""The report's figures (PNG), drawn on matplotlib's Agg canvas directly (no pyplot, so no global backend
is changed):

    fig8_robust_vs_sparsity.png    robust accuracy vs target sparsity, one line per method (paper Fig. 8)
    fig7_weight_distribution.png   log10|w| of the exported kernels per method (paper Fig. 7)
    fig_layer_density.png          the kept fraction of each layer per method, a panel per target sparsity
    fig5_ensemble_vs_network.png   validation robust accuracy per epoch, network vs temporal ensemble, and
                                   the ensemble divergence Delta (paper Fig. 5)
    fig_robust_vs_input_gradient.png   test robust accuracy vs the input-gradient L1, a point per cell
"""

from __future__ import annotations

import os
import textwrap

import numpy as np

from frep_tf.experiments.report.stats import (
    Row,
    accuracy,
    epoch_marks,
    kept_per_layer,
    mean_std,
    measures,
    trained_sparsity,
)
from frep_tf.experiments.report.tables import row_label, sparsity_label
from frep_tf.workdir import FIGURES_DIR

FIGURES = {
    "fig8": "fig8_robust_vs_sparsity.png",
    "fig7": "fig7_weight_distribution.png",
    "layers": "fig_layer_density.png",
    "fig5": "fig5_ensemble_vs_network.png",
    "lipschitz": "fig_robust_vs_input_gradient.png",
}


METHOD_COLORS = {"Ori": "tab:blue", "FReP-CH": "tab:green", "FReP": "tab:red"}


ROBUST_FIG8 = (("pgd", "PGD"), ("autoattack", "AA"))


def draw_figures(
    workdir: str, rows: list[Row], scalars: dict, dataset: str, problems: list[str], test_numbers: bool = True
) -> dict[str, str]:
    """Every figure the finished cells allow, into <workdir>/figures/; a figure an earlier report drew but
    this one cannot is deleted. Returns {fig8|fig7|layers|fig5|lipschitz: path}; notes go to `problems`.
    Without `test_numbers` (a validation-only experiment) the figures of test-set numbers, fig8 and lipschitz,
    are not drawn."""
    figures_dir = os.path.join(workdir, FIGURES_DIR)
    os.makedirs(figures_dir, exist_ok=True)
    figures: dict[str, str] = {}
    if rows:
        path = os.path.join(figures_dir, FIGURES["fig8"])
        if test_numbers and figure_robust_vs_sparsity(rows, path, dataset):
            figures["fig8"] = path
        path = os.path.join(figures_dir, FIGURES["fig7"])
        written, missing = figure_weight_distribution(rows, path, dataset)
        if written:
            figures["fig7"] = path
        if missing:
            problems.append(
                f"{missing} finished cell(s) have no weight_histogram in results.json (made before the field "
                "existed): left out of Fig. 7"
            )
        path = os.path.join(figures_dir, FIGURES["layers"])
        if figure_layer_density(rows, path, dataset):
            figures["layers"] = path
        _, left_out, missing = kept_per_layer(rows)
        if missing:
            problems.append(
                f"{missing} finished sparse cell(s) have no pruning.layers in results.json (made before the "
                "field existed): left out of the per-layer figure"
            )
        if left_out:
            problems.append(
                "the per-layer figure shows the target sparsities with the most rows; left out: "
                + ", ".join(sparsity_label(p.sparsity, p.structured) for p in left_out)
            )
        path = os.path.join(figures_dir, FIGURES["fig5"])
        if figure_ensemble_vs_network(rows, scalars, path, dataset):
            figures["fig5"] = path
        path = os.path.join(figures_dir, FIGURES["lipschitz"])
        if test_numbers and figure_robust_vs_input_gradient(rows, path, dataset):
            figures["lipschitz"] = path
    for key, name in FIGURES.items():  # a figure an earlier report drew but this one cannot
        if key not in figures and os.path.exists(os.path.join(figures_dir, name)):
            os.remove(os.path.join(figures_dir, name))
    return figures


def _set_wrapped_title(ax, title: str, width: int = 55) -> None:
    """A panel title, wrapped (and smaller) when long: rows named after several axes get long labels,
    which would run into the neighbouring panels' titles."""
    wrapped = textwrap.fill(title, width=width, break_long_words=False)
    ax.set_title(wrapped, fontsize="medium" if "\n" not in wrapped else "small")


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig, path: str) -> None:
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, "." + os.path.basename(path) + ".tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


def _color(method: str, index: int) -> str:
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    palette = ["tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
    return palette[index % len(palette)]


def _colors(rows: list[Row]) -> dict[str, str]:
    others = sorted({r.method for r in rows} - set(METHOD_COLORS))
    return METHOD_COLORS | {m: _color(m, i) for i, m in enumerate(others)}


def _series_label(row: Row, with_sparsity: bool = False) -> str:
    parts = [row.method + (" (structured)" if row.structured else "")]
    if with_sparsity:
        parts.append(sparsity_label(row.sparsity, row.structured).replace(" channels", ""))
    parts += [f"{k}={v}" for k, v in row.shown.items()]
    return ", ".join(parts)


def figure_robust_vs_sparsity(rows: list[Row], path: str, dataset: str) -> bool:
    """Paper Fig. 8: robust accuracy against target sparsity, a line per method, error bars = std over seeds."""
    attacks = [(a, t) for a, t in ROBUST_FIG8 if any(accuracy(c.results, a) is not None for r in rows for c in r.cells)]
    if not attacks:
        return False
    colors = _colors(rows)
    fig = _new_figure(5.2 * len(attacks), 4.2)
    axes = fig.subplots(1, len(attacks), squeeze=False)[0]
    for ax, (attack, title) in zip(axes, attacks, strict=True):
        lines: dict[str, list] = {}
        for row in rows:
            m, s, n = mean_std(accuracy(c.results, attack) for c in row.cells)
            if n and row.sparsity is not None:
                label = _series_label(row)
                if trained_sparsity(row) != row.sparsity:
                    label += f" (dense; its source {sparsity_label(row.sparsity, row.structured)} sparse)"
                x = 100 * trained_sparsity(row)
                lines.setdefault(label, []).append((x, 100 * m, 100 * (s or 0), row))
        ticks = sorted({p[0] for points in lines.values() for p in points})
        # Sparsities evenly spaced, as in the paper's figure: on a linear axis 99, 99.5 and 99.8 % would
        # sit on top of each other. Lines sit side by side by a hair, so error bars at the same sparsity
        # do not hide each other.
        position = {t: i for i, t in enumerate(ticks)}
        dodge = 0.04
        seen: dict[tuple, int] = {}  # series of one method and kind tell themselves apart by marker
        label_of = {id(points): label for label, points in lines.items()}
        for i, points in enumerate(lines.values()):
            points.sort(key=lambda p: p[0])
            shift = (i - (len(lines) - 1) / 2) * dodge
            first = points[0][3]
            k = seen[(first.method, first.structured)] = seen.get((first.method, first.structured), -1) + 1
            ax.errorbar(
                [position[p[0]] + shift for p in points],
                [p[1] for p in points],
                yerr=[p[2] for p in points],
                label=label_of[id(points)],
                color=colors[first.method],
                linestyle=("--" if first.structured else "-") if k == 0 else (":" if first.structured else "-."),
                marker=("sXP" if first.structured else "o^Dv")[k % (3 if first.structured else 4)],
                capsize=4,
            )
        ax.set_xlim(-0.5, len(ticks) - 0.5)
        ax.set_xticks(range(len(ticks)))
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        structured = any(r.structured for r in rows)
        ax.set_xlabel("target sparsity (%" + ("; structured: of channels" if structured else "") + "; evenly spaced)")
        ax.set_ylabel(f"{title} accuracy (%)")
        ax.set_title(f"{title} robust accuracy vs sparsity")
        ax.grid(alpha=0.3)
    # One legend for all panels, under them, so it never covers a point.
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    # Labels of rows named after several axes are long: one column, wrapped to the figure's width.
    long_labels = max(len(label) for label in handles) > 40
    chars = max(30, int(fig.get_figwidth() * 10))
    labels = (
        [textwrap.fill(label, chars, break_long_words=False) for label in handles] if long_labels else list(handles)
    )
    ncols = 1 if long_labels else min(len(handles), 3)
    if long_labels:  # room for the legend's lines, so the panels keep their height
        fig.set_figheight(fig.get_figheight() + 0.2 * sum(label.count("\n") + 1 for label in labels))
    fig.legend(list(handles.values()), labels, loc="outside lower center", ncols=ncols, fontsize="small")
    fig.suptitle(f"{dataset}: mean ± std over seeds (paper Fig. 8)")
    _save(fig, path)
    return True


def figure_weight_distribution(rows: list[Row], path: str, dataset: str) -> tuple[bool, int]:
    """Paper Fig. 7: distribution of log10|w| of the exported kernels, a panel per sparsity setting, a
    line per method (histograms of the seeds added up). Returns (written, cells without the field)."""
    missing = sum(1 for r in rows for c in r.cells if not c.results.get("weight_histogram"))
    groups: dict[tuple, list[tuple[Row, dict]]] = {}
    for row in rows:
        hists = [c.results["weight_histogram"] for c in row.cells if c.results.get("weight_histogram")]
        if not hists:
            continue
        edges = np.asarray(hists[0]["edges"])
        if any(not np.array_equal(np.asarray(h["edges"]), edges) for h in hists):
            continue
        total = {
            "edges": edges,
            "counts": np.sum([h["counts"] for h in hists], axis=0),
            "zeros": sum(h["zeros"] for h in hists),
            "total": sum(h["total"] for h in hists),
            "outside": sum(h.get("below", 0) + h.get("above", 0) for h in hists),
        }
        key = row.key[1:]  # everything but the method
        groups.setdefault(key, []).append((row, total))
    if not groups:
        return False, missing
    colors = _colors(rows)
    ncols = min(len(groups), 3)
    nrows = -(-len(groups) // ncols)
    fig = _new_figure(5.0 * ncols, 3.8 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    for ax, (_, members) in zip(axes, sorted(groups.items()), strict=False):
        lo, hi, peak = np.inf, -np.inf, 0.0
        for row, h in members:
            counts = h["counts"].astype(np.float64)
            nonzero = counts.sum() + h["outside"]
            if not nonzero:
                continue
            share = 100 * counts / nonzero
            used = np.nonzero(counts)[0]
            lo, hi = min(lo, h["edges"][used[0]]), max(hi, h["edges"][used[-1] + 1])
            peak = max(peak, float(share.max()))
            zeros = 100 * h["zeros"] / max(h["total"], 1)
            ax.stairs(
                share,
                h["edges"],
                color=colors[row.method],
                linewidth=1.6,
                label=f"{row.method}: {zeros:.1f} % zeros, {int(nonzero / len(row.cells)):,} non-zero (n={len(row.cells)})",
            )
        if np.isfinite(lo):
            ax.set_xlim(lo - 0.3, hi + 0.3)
            # Head room for the legend, which sits above the histograms rather than on them.
            ax.set_ylim(0, peak * (1.15 + 0.1 * len(members)))
        first = members[0][0]
        title = sparsity_label(first.sparsity, first.structured)
        title += "".join(f", {k}={v}" for k, v in first.shown.items())
        _set_wrapped_title(ax, f"target sparsity {title}")
        ax.set_xlabel("log10 |w| of non-zero kernel weights")
        ax.set_ylabel("% of non-zero weights per 0.1 decade")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="upper left")
    fig.suptitle(f"{dataset}: exported (fused) kernel weights (paper Fig. 7)")
    _save(fig, path)
    return True, missing


def _count(n: float) -> str:
    """A kept count for a bar label: 888, 2,062, 23.7k, 1.2M."""
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    if n >= 1e4:
        return f"{n / 1e3:.3g}k"
    return f"{n:,.0f}"


def figure_layer_density(rows: list[Row], path: str, dataset: str) -> bool:
    """The kept fraction of each layer (log scale) that each method chose, a panel per target sparsity:
    grouped bars, layers in network order, mean over seeds with the seeds' range as error bars, labelled
    with the kept count when there are few bars; the global kept fraction (1 - sparsity) dashed."""
    panels, _, _ = kept_per_layer(rows)
    if not panels:
        return False
    colors = _colors(rows)
    hatches = ("", "//", "..", "xx", "\\\\", "oo")
    bars = max(len(p.layers) * len(p.series) for p in panels)
    labelled = bars <= 24
    # Side by side while they fit in 16 inches; one above the other when panels have many bars.
    width = max(4.2, 0.8 + max(len(p.layers) * (0.32 * len(p.series) + 0.3) for p in panels))
    stacked = width * len(panels) > 16.0
    ncols = 1 if stacked else len(panels)
    nrows = len(panels) if stacked else 1
    fig = _new_figure(min(width * ncols, 16.0), 4.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    kept_fractions = [k.fraction_min for p in panels for _, kept in p.series for k in kept.values()]
    lowest = min([f for f in kept_fractions if f > 0] + [1 - p.sparsity for p in panels if p.sparsity < 1] + [1.0])
    bottom = 10 ** (np.floor(np.log10(lowest)) - (0.3 if labelled else 0.0))
    top = 5.0 if labelled else 1.6  # head room for the counts above the dense layers' bars
    for ax, panel in zip(axes, panels, strict=True):
        x = np.arange(len(panel.layers))
        step = 0.8 / len(panel.series)
        seen: dict[str, int] = {}
        for i, (row, kept) in enumerate(panel.series):
            k = seen[row.method] = seen.get(row.method, -1) + 1
            n = max(v.n for v in kept.values())
            where = [j for j, name in enumerate(panel.layers) if name in kept]
            stats = [kept[panel.layers[j]] for j in where]
            xs = x[where] + (i - (len(panel.series) - 1) / 2) * step
            means = np.asarray([s.fraction for s in stats])
            ax.bar(
                xs,
                np.maximum(means, bottom),  # a layer cut off entirely still shows (its count says 0)
                width=step * 0.92,
                bottom=0,
                color=colors[row.method],
                hatch=hatches[k % len(hatches)],
                edgecolor="white" if k == 0 else "black",
                linewidth=0.5,
                label=_series_label(row),  # the tables give each row's n
            )
            if n > 1:
                ax.errorbar(
                    xs, means,
                    yerr=[means - [s.fraction_min for s in stats], [s.fraction_max for s in stats] - means],
                    fmt="none", ecolor="black", elinewidth=1, capsize=3,
                )  # fmt: skip
            if labelled:  # on a white ground, so the dashed line through a label does not hide it
                for xi, s in zip(xs, stats, strict=True):
                    ax.annotate(
                        _count(s.kept), (xi, max(s.fraction_max, bottom)), xytext=(0, 3),
                        textcoords="offset points", ha="center", va="bottom", rotation=90, fontsize="x-small",
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5}, zorder=4,
                    )  # fmt: skip
        target = 1 - panel.sparsity
        ax.axhline(target, color="black", linestyle="--", linewidth=1.2, label="global kept fraction (1 − sparsity)")
        ax.set_yscale("log")
        ax.set_ylim(bottom, top)
        ax.yaxis.set_major_formatter(lambda v, _: f"{100 * v:g} %" if v <= 1 else "")
        totals = {name: sorted({kept[name].total for _, kept in panel.series if name in kept}) for name in panel.layers}
        names = [
            f"{name}\n{'/'.join(_count(t) for t in totals[name])} weights" if len(panel.layers) <= 8 else name
            for name in panel.layers
        ]
        ax.set_xticks(x)
        if len(panel.layers) <= 6:
            ax.set_xticklabels(names)
        else:  # many layers: slanted names, each ending under its group of bars
            ax.set_xticklabels(names, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_xlim(-0.6, len(panel.layers) - 0.4)
        _set_wrapped_title(ax, f"target sparsity {sparsity_label(panel.sparsity, panel.structured)}")
        ax.set_ylabel("kept fraction of the layer (log)")
        ax.grid(axis="y", alpha=0.3)
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    # As many legend columns as fit the figure's width (about 13 characters of "small" text per inch).
    fit = int(fig.get_figwidth() * 13 / (max(len(label) for label in handles) + 5))
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncols=max(1, min(len(handles), 3, fit)),
        fontsize="small",
    )
    seeds = any(k.n > 1 for p in panels for _, kept in p.series for k in kept.values())
    title = (
        f"{dataset}: kept fraction per layer"
        + (" (mean over seeds; error bars: their range)" if seeds else "")
        + (", count kept above each bar" if labelled else "")
    )
    fig.suptitle(textwrap.fill(title, int(fig.get_figwidth() * 11), break_long_words=False))
    _save(fig, path)
    return True


def _mean_curve(curves: list[dict[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    steps = sorted(set().union(*curves)) if curves else []
    means = [np.mean([c[s] for c in curves if s in c]) for s in steps]
    return np.asarray(steps), np.asarray(means)


def figure_ensemble_vs_network(rows: list[Row], scalars: dict[str, dict], path: str, dataset: str) -> bool:
    """Paper Fig. 5: per epoch, the validation PGD accuracy of the network and of the temporal ensemble
    (top) and the ensemble divergence Delta (bottom), a panel per table row, mean over seeds."""
    panels = []
    for row in rows:
        runs = [scalars.get(c.name) or {} for c in row.cells]
        if any("val_pgd_acc" in r for r in runs):
            panels.append((row, runs))
    if not panels:
        return False
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    fig = _new_figure(4.6 * ncols, 4.6 * nrows)
    grid = fig.subplots(2 * nrows, ncols, squeeze=False, gridspec_kw={"height_ratios": [2, 1] * nrows})
    for i in range(nrows * ncols):
        top, bottom = grid[2 * (i // ncols), i % ncols], grid[2 * (i // ncols) + 1, i % ncols]
        if i >= len(panels):
            top.set_visible(False)
            bottom.set_visible(False)
            continue
        row, runs = panels[i]
        n = len(runs)
        for tag, label, color in (
            ("val_pgd_acc", "network", "tab:gray"),
            ("val_ensemble_pgd_acc", "temporal ensemble", "tab:red"),
        ):
            curves = [r[tag] for r in runs if tag in r]
            if curves:
                steps, means = _mean_curve(curves)
                top.plot(steps + 1, 100 * means, label=label, color=color, marker=".")
        curves = [r["ensemble_delta"] for r in runs if "ensemble_delta" in r]
        if curves:
            steps, means = _mean_curve(curves)
            bottom.plot(steps + 1, means, color="tab:purple", marker=".")
        else:  # --noensemble
            bottom.text(
                0.5, 0.5, "no temporal ensemble", ha="center", va="center", transform=bottom.transAxes,
                bbox={"facecolor": "white", "edgecolor": "none"},
            )  # fmt: skip
            bottom.set_yticks([])
        for i, (epoch, label) in enumerate(epoch_marks(row.cells[0], row.sparsity)):
            for ax in (top, bottom):
                ax.axvline(epoch + 0.5, color="k", linestyle=":", linewidth=1)
            top.annotate(  # labels of neighbouring marks alternate in height so that they never overlap
                label, (epoch + 0.5, 1), xycoords=("data", "axes fraction"), xytext=(3, -12 - 11 * (i % 2)),
                textcoords="offset points", fontsize="small",
            )  # fmt: skip
        _set_wrapped_title(top, f"{row_label(row)} (n={n})")
        top.set_ylabel("val. PGD accuracy (%)")
        top.grid(alpha=0.3)
        top.tick_params(labelbottom=False)
        bottom.set_ylabel("Δ (divergence)")
        bottom.set_xlabel("epoch")
        bottom.grid(alpha=0.3)
        top.sharex(bottom)
        bottom.xaxis.get_major_locator().set_params(integer=True)
    handles = {}
    for ax in grid[0::2].ravel():
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles))
    fig.suptitle(f"{dataset}: network vs temporal ensemble during training, mean over seeds (paper Fig. 5)")
    _save(fig, path)
    return True


def figure_robust_vs_input_gradient(rows: list[Row], path: str, dataset: str) -> bool:
    """Test robust accuracy (AutoAttack, else PGD) against the input-gradient L1 of each finished cell,
    a marker per table row: does the Lipschitz proxy track robustness?"""
    points = [
        (row, m)
        for row in rows
        for c in row.cells
        if (m := measures(c))["input_gradient_l1"] is not None and m["robust"] is not None
    ]
    if not points:
        return False
    colors = _colors(rows)
    fig = _new_figure(6.4, 4.8)
    ax = fig.subplots()
    markers = "oDs^v<>PXhp*"
    seen: dict[str, int] = {}
    for row in rows:
        mine = [m for r, m in points if r is row]
        if not mine:
            continue
        k = seen[row.method] = seen.get(row.method, -1) + 1
        ax.scatter(
            [m["input_gradient_l1"] for m in mine],
            [100 * m["robust"] for m in mine],
            color=colors[row.method],
            marker=markers[k % len(markers)],
            s=46,
            label=f"{row_label(row)} ({'/'.join(sorted({m['robust_attack'] for m in mine}))})",
        )
    ax.set_xlabel("mean L1 norm of the input gradient of the margin (test points)")
    ax.set_ylabel("test robust accuracy (%)")
    ax.grid(alpha=0.3)
    labels = ax.get_legend_handles_labels()
    fig.set_figheight(fig.get_figheight() + 0.22 * len(labels[1]))
    fig.legend(*labels, loc="outside lower center", ncols=1, fontsize="small")
    fig.suptitle(f"{dataset}: robustness vs the input-gradient norm, one point per cell")
    _save(fig, path)
    return True
