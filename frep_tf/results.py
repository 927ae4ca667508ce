"""What a run reports: parts of results.json (schema in docs/outputs.md) and the summary table it prints."""

from __future__ import annotations

import os

from frep_tf.config import TABLE_I_COLUMNS, Config
from frep_tf.workdir import VALIDATION_LOG_DIR

# 2: evaluation_tflite per exported TFLite file; compact; int8_calibration (+ method). Keys added since
# without a new version, because a reader of version 2 loses nothing by not knowing them (and a new
# version would make every finished version-2 workdir refused): catastrophic_overfitting (train mode,
# present only when the guard flagged an epoch).
RESULTS_SCHEMA_VERSION = 2
# Where the epoch monitor writes its per-epoch scalars (frep_tf.methods.stages.make_callbacks).
MONITOR_LOG_DIR = VALIDATION_LOG_DIR  # the epoch monitor's scalars, read back by the guard


def train_results(
    cfg: Config,
    info,
    model,
    final,
    *,
    masks,
    plan,
    clock,
    steps_per_epoch: int,
    last_logs: dict,
    timings: dict,
    source: dict | None,
    records,
    compact_report,
    representative,
    evaluated: str | None,
    evaluation: dict,
    tflite_evaluation,
) -> dict:
    """results.json of a training run (its schema, documented in docs/outputs.md, lives here)."""
    import numpy as np

    from frep_tf.training.pruning import kernel_sparsity
    from frep_tf.weight_stats import sparsity_measures, weight_histogram

    workdir = cfg.run.workdir
    sparsity = kernel_sparsity(final)
    collapse = catastrophic_overfitting(workdir)
    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "mode": "train",
        "dataset": info_dict(info),
        "model": {
            "arch": cfg.model.arch,
            "parameterization": cfg.model.parameterization,
            # Which weights `final` (the exported model) holds: read off that object, not the configuration.
            "evaluated": "ensemble" if final is model.ensemble else "network",
            "evaluated_path": os.path.relpath(evaluated, workdir) if evaluated else None,
        },
        "params": {
            "training_trainable": int(sum(np.prod(v.shape) for v in model.network.trainable_weights)),
            "deployed": sparsity["all_params"],
            "deployed_kernels": sparsity["kernel_params"],
            "deployed_nonzero": sparsity["nonzero_params"],
        },
        "sparsity": {"kernels": sparsity["kernels"], "all_parameters": sparsity["all_parameters"]},
        "weight_histogram": weight_histogram(final),  # paper Fig. 7, for reports
        "sparsity_measures": sparsity_measures(final),
        # What each prunable layer keeps of its weights (its mask; the training network's layer names).
        "pruning": {"layers": masks},
        "evaluation": evaluation,
        "evaluation_tflite": tflite_evaluation,
        "exports": [
            {
                "format": r.format,
                "path": os.path.relpath(r.path, workdir),
                "bytes": r.bytes,
                "max_abs_diff": r.max_abs_diff,
                "seconds": round(r.seconds, 3),
            }
            | ({"int8_top1_agreement": r.agreement} if r.agreement is not None else {})
            for r in records
        ],
        "int8_calibration": (
            None if representative is None else {"split": "train", "images": int(len(representative))}
        ),
        "compact": compact_summary(compact_report, records) if compact_report else None,
        "method": method_summary(cfg, plan, clock) | ({"source": source} if source is not None else {}),
        "training": {
            "epochs": plan[-1].end,
            "steps": sum(st.epochs * steps_per_epoch for st in plan if st.kind == "fit"),
            "steps_per_epoch": steps_per_epoch,
            "ensemble_updates": int(model.ensemble_updates.numpy()),
            # The last epoch's logs, as its checkpoint recorded them: the same whether that epoch
            # ran in this process or before a kill.
            "final_epoch": last_logs,
        },
        "timings": timings,
    }
    if collapse is not None:
        results["catastrophic_overfitting"] = collapse
    return results


def catastrophic_overfitting(workdir: str) -> dict | None:
    """results.json `catastrophic_overfitting`: the first epoch the guard flagged (frep_tf.training.overfitting),
    found again in the per-epoch scalars the monitor recorded over every stage and process (so a resumed
    run reports an epoch flagged before its kill); None when none was, or nothing was recorded."""
    from frep_tf.experiments.tb_events import EventFileError, read_scalars
    from frep_tf.training import overfitting

    try:
        scalars = read_scalars(os.path.join(workdir, MONITOR_LOG_DIR))
    except (EventFileError, OSError):
        return None
    return overfitting.collapse_record(
        scalars.get(overfitting.VAL_PGD_TAG, {}), scalars.get(overfitting.ADV_ACC_TAG, {})
    )


def method_summary(cfg: Config, plan, clock) -> dict:
    """results.json `method`: the stages that ran, each with its epochs, wall time and peak memory."""
    record = clock.snapshot()
    rows = []
    for st in plan:
        r = record.get(st.name, {})
        rows.append(
            {
                "name": st.name,
                "first_epoch": st.start,
                "epochs": st.epochs,
                "kind": st.kind,
                "objective": st.objective,
                "lr": st.lr,
                "lr_schedule": st.schedule if st.kind == "fit" else None,
                "seconds": r.get("seconds"),
                "peak_rss_mb": r.get("peak_rss_mb"),
            }
        )
    seconds = [r["seconds"] for r in rows if r["seconds"] is not None]
    peaks = [r["peak_rss_mb"] for r in rows if r["peak_rss_mb"] is not None]
    return {
        "name": cfg.method.method,
        "epoch_scale": cfg.method.epoch_scale,
        "stages": rows,
        "seconds": round(sum(seconds), 3) if seconds else None,
        "peak_rss_mb": max(peaks) if peaks else None,
    }


def compact_summary(report: dict, records) -> dict:
    """Parameters, MACs and file bytes of the model before and after its removed channels are taken out."""
    size = {r.format: r.bytes for r in records}
    pairs = [("keras", "compact_keras"), ("saved_model", "compact_saved_model"), ("tflite", "compact_tflite")]
    pairs.append(("tflite_int8_dense", "compact_tflite_int8"))
    return report | {
        "bytes": {after: {"before": size.get(before), "after": size[after]} for before, after in pairs if after in size}
    }


def info_dict(info) -> dict:
    return {
        "name": info.name,
        "image_shape": list(info.image_shape),
        "num_classes": info.num_classes,
        "num_train": info.num_train,
        "num_val": info.num_val,
        "num_test": info.num_test,
        "augmentation": info.augmentation,
    }


def attack_results(evaluation: dict) -> dict:
    """{attack: {"accuracy", "samples", "seconds"}} for the attacks run, in the order they ran."""
    return {k: v for k, v in evaluation.items() if isinstance(v, dict) and "accuracy" in v and k != "worst_case"}


def summary_table(results: dict) -> str:
    """A short Markdown summary: one row shaped like the paper's Table I, sanity, sparsity, exports, time."""
    ev = results["evaluation"]
    attacks = attack_results(ev)
    columns = list(TABLE_I_COLUMNS) + [(k, k) for k in attacks if k not in dict(TABLE_I_COLUMNS)]
    model = results.get("model", {})
    name = " ".join(str(model[k]) for k in ("arch", "parameterization") if model.get(k)) or os.path.basename(
        str(model.get("evaluated_path", "model"))
    )
    if "sparsity" in results:
        name += f" ({100 * results['sparsity']['kernels']:.0f} % sparse)"
    cells = [f"{100 * attacks[k]['accuracy']:.1f}" if k in attacks else "-" for k, _ in columns]
    sanity = ev.get("sanity")
    verdict = "not run" if sanity is None else ("pass" if sanity.get("passed") else "FAIL")
    lines = [
        "",
        "| Model | " + " | ".join(title for _, title in columns) + " |",
        "|---|" + "---:|" * len(columns),
        f"| {name} | " + " | ".join(cells) + " |",
        "",
        f"accuracy (%) on {next(iter(attacks.values()))['samples']} test examples of {results['dataset']['name']}, "
        f"epsilon {ev['config']['epsilon']:.4g}; sanity checks: {verdict}",
    ]
    if sanity is not None and not sanity.get("passed"):
        failed = [name for name, c in sanity.get("checks", {}).items() if c.get("passed") is False]
        lines.append(f"failed checks: {', '.join(failed)} (see results.json)")
    if "sparsity" in results:
        s = results["sparsity"]
        p = results["params"]
        lines.append(
            f"sparsity: {100 * s['kernels']:.2f} % of kernel weights, {100 * s['all_parameters']:.2f} % of all "
            f"parameters; {p['deployed_nonzero']:,} of {p['deployed']:,} parameters non-zero"
        )
    for tfl in (results.get("evaluation_tflite") or {}).values():
        lines.append(
            f"{tfl['path']}: clean {100 * tfl['clean']['accuracy']:.1f} %, PGD transferred from the Keras model "
            f"{100 * tfl['transfer_pgd']['accuracy']:.1f} %, Square on the interpreter "
            f"{100 * tfl['square']['accuracy']:.1f} %"
        )
    c = results.get("compact")
    if c:
        lines.append(
            f"compact: {c['params_after']:,} of {c['params_before']:,} parameters, {c['macs_after']:,} of "
            f"{c['macs_before']:,} MACs per image ({c['channels_after']} of {c['channels_before']} prunable channels)"
        )
    co = results.get("catastrophic_overfitting")
    if co:
        lines.append(
            f"catastrophic overfitting? flagged after epoch {co['epoch']}: validation PGD accuracy "
            f"{100 * co['val_pgd_before']:.1f} % -> {100 * co['val_pgd_after']:.1f} % (see results.json)"
        )
    for e in results.get("exports", []):
        lines.append(f"export: {e['path']} ({e['bytes']:,} bytes, max |diff| vs Keras {e['max_abs_diff']:.2g})")
    t = results["timings"]
    lines.append("time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    return "\n".join(lines)
