"""A Markdown row of an evaluation, shaped like Table I of the FReP paper."""

from frep_tf.config import TABLE_I_COLUMNS as TABLE_COLUMNS


def markdown_table(results, *, name="model"):
    """One row like Table I of the FReP paper (accuracies in %), then any failed sanity check."""
    header = "| " + " | ".join(["Model", *(title for _, title in TABLE_COLUMNS)]) + " |"
    rule = "|" + "---|" * (len(TABLE_COLUMNS) + 1)
    cells = [f"{100 * results[k]['accuracy']:.1f}" if k in results else "-" for k, _ in TABLE_COLUMNS]
    lines = [header, rule, "| " + " | ".join([name, *cells]) + " |"]
    sanity = results.get("sanity")
    if sanity is not None:
        lines.append("")
        failed = {k: c for k, c in sanity["checks"].items() if c["passed"] is False}
        if failed:
            lines += [f"- sanity check failed, {k}: {c['message']}" for k, c in failed.items()]
        else:
            lines.append("Sanity checks: all passed.")
    return "\n".join(lines) + "\n"
