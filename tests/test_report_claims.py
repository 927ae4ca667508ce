"""Claims (`claim LABEL = METRIC: A > B` in an experiment file): parsing and its one-line errors, each
verdict (holds, does not hold, inside the seed spread, one seed, not measured yet, a selector matching
several rows, a test metric in a validation-only experiment) against an independent mean ± sample std of
the values written into synthetic cells, the report's Claims section, and `main.py --mode=report
--experiment=FILE` (claims read from the file, stored in experiment.json; another experiment's file
refused in one line). No TensorFlow."""

import json
import os
import statistics
import subprocess
import sys

import pytest

from frep_tf.config import Config, ConfigError
from frep_tf.experiments import runner, spec
from frep_tf.experiments.report import claims as claims_mod
from frep_tf.experiments.report import write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "--dataset=digits\naxis parameterization = plain | hadamard\naxis sparsity = 0.9 | 0.99\naxis seed = 0 | 1\n"
# (parameterization, sparsity) -> per seed (test AutoAttack accuracy, last validation PGD accuracy, train s)
GRID = {
    ("hadamard", 0.99): [(0.60, 0.55, 100.0), (0.61, 0.56, 110.0), (0.62, 0.57, 120.0)],
    ("plain", 0.99): [(0.50, 0.50, 200.0), (0.52, 0.52, 210.0), (0.51, 0.51, 190.0)],
    # difference 2 points: more than either std (1.4), less than both added (2.8)
    ("hadamard", 0.9): [(0.70, 0.60, 100.0), (0.72, 0.62, 100.0)],
    ("plain", 0.9): [(0.68, 0.60, 100.0), (0.70, 0.61, 100.0)],
    ("hadamard", 0.995): [(0.40, 0.40, 100.0)],
    ("plain", 0.995): [(0.30, 0.30, 100.0), (0.32, 0.31, 100.0)],
}
PENDING = [("hadamard", 0.998), ("plain", 0.998)]  # listed in experiment.json, never run
TEST_CLEAN = 0.987654  # only a report showing test numbers can show 98.8
LABELS = {"hadamard": "FReP", "plain": "Ori"}


def _claim(label, metric, a, op, b):
    return {"label": label, "metric": metric, "op": op, "a": a, "b": b, "line": 7}


def _sel(p, s):
    return {"parameterization": p, "sparsity": str(s)}


CLAIMS = [
    _claim("FReP beats Ori at 99 %", "autoattack", _sel("hadamard", 0.99), ">", _sel("plain", 0.99)),
    _claim("Ori beats FReP at 99 %", "autoattack", _sel("plain", 0.99), ">", _sel("hadamard", 0.99)),
    _claim("FReP beats Ori at 90 %", "autoattack", _sel("hadamard", 0.9), ">", _sel("plain", 0.9)),
    _claim("FReP trains faster", "train_seconds", _sel("hadamard", 0.99), "<", _sel("plain", 0.99)),
    _claim("FReP is less robust", "autoattack", _sel("hadamard", 0.99), "<", _sel("plain", 0.99)),
    _claim("FReP beats Ori at 99.5 %", "autoattack", _sel("hadamard", 0.995), ">", _sel("plain", 0.995)),
    _claim("FReP at 99.8 % beats Ori at 99 %", "autoattack", _sel("hadamard", 0.998), ">", _sel("plain", 0.99)),
    _claim("FReP beats Ori anywhere", "autoattack", {"parameterization": "hadamard"}, ">", _sel("plain", 0.99)),
    _claim("FReP validates better", "val_pgd", _sel("hadamard", 0.99), ">", _sel("plain", 0.99)),
]
VERDICTS = {
    "FReP beats Ori at 99 %": "holds",
    "Ori beats FReP at 99 %": "does not hold",
    "FReP beats Ori at 90 %": "inside the seed spread",
    "FReP trains faster": "holds",
    "FReP is less robust": "does not hold",
    "FReP beats Ori at 99.5 %": "one seed: not judged",
    "FReP at 99.8 % beats Ori at 99 %": "not measured yet",
    "FReP beats Ori anywhere": "several rows: not judged",
    "FReP validates better": "holds",
}


def _cell_name(p, s, seed):
    return f"parameterization={p},sparsity={s},seed={seed}"


def make_workdir(workdir, attacks="clean,autoattack", claims=None, name="grid"):
    """The GRID as finished cells (config.json, results.json, scalars.json) plus PENDING cells, and
    experiment.json with `claims` (none: no key)."""
    entries = []
    for (p, s), seeds in [*GRID.items(), *[(k, [None]) for k in PENDING]]:
        for seed, values in enumerate(seeds):
            cell = _cell_name(p, s, seed)
            flags = {"parameterization": p, "sparsity": str(s), "seed": str(seed)}
            entries.append({"name": cell, "dir": f"cells/{cell}", "flags": flags})
            if values is None:
                continue
            robust, val, seconds = values
            cell_dir = os.path.join(workdir, "cells", cell)
            os.makedirs(cell_dir)
            flat = {"dataset": "digits", "parameterization": p, "sparsity": s, "seed": seed, "prune_epoch": 1}
            with open(os.path.join(cell_dir, "config.json"), "w") as fh:
                fh.write(Config.from_flat({**flat, "eval_attacks": attacks}).to_json())
            evaluation = {"clean": {"accuracy": TEST_CLEAN, "samples": 100}, "config": {"epsilon": 0.1}}
            evaluation["autoattack"] = {"accuracy": robust, "samples": 100}
            results = {
                "dataset": {"name": "digits", "num_val": 200},
                "model": {"evaluated": "network", "evaluated_path": "export/model.keras"},
                "sparsity": {"kernels": s},
                "sparsity_measures": {"overall": {"zero": s, "near_zero": s}, "near_zero_relative": 0.001},
                "evaluation": evaluation,
                "training": {"epochs": 3},
                "method": {"seconds": seconds},
                "timings": {"train": seconds, "total": seconds + 5},
            }
            with open(os.path.join(cell_dir, "results.json"), "w") as fh:
                json.dump(results, fh)
            scalars = {
                "val_pgd_acc": {"0": 0.1, "1": 0.99, "2": val},  # the last epoch's, not the best
                "val_clean_acc": {"0": 0.5, "1": 0.6, "2": 0.7},
            }
            with open(os.path.join(cell_dir, "scalars.json"), "w") as fh:
                json.dump(scalars, fh)
    axes = [
        {"flag": "parameterization", "values": ["plain", "hadamard"]},
        {"flag": "sparsity", "values": ["0.9", "0.99", "0.995", "0.998"]},
        {"flag": "seed", "values": ["0", "1", "2"]},
    ]
    experiment = {"name": name, "axes": axes, "cells": entries}
    if claims is not None:
        experiment["claims"] = claims
    with open(os.path.join(workdir, "experiment.json"), "w") as fh:
        json.dump(experiment, fh)
    return workdir


@pytest.fixture(scope="module")
def normal(tmp_path_factory):
    workdir = make_workdir(str(tmp_path_factory.mktemp("normal")), claims=CLAIMS)
    summary = write_report(workdir)
    with open(summary["report"]) as fh:
        return summary, fh.read()


@pytest.fixture(scope="module")
def validation(tmp_path_factory):
    workdir = make_workdir(str(tmp_path_factory.mktemp("validation")), attacks="clean", claims=CLAIMS)
    summary = write_report(workdir)
    with open(summary["report"]) as fh:
        return summary, fh.read()


def _section(text):
    return text.split("## Claims\n", 1)[1].split("\n## ", 1)[0]


def _line(text, label):
    (line,) = [line for line in _section(text).splitlines() if line.startswith(f"- **{label}**")]
    return line


def _stats(p, s, index, scale=100.0):
    values = [v[index] for v in GRID[(p, s)]]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)


def _side(p, s, index, scale=100.0):
    m, sd, n = _stats(p, s, index)
    text = f"{scale * m:.1f}" + (f" ± {scale * sd:.1f}" if sd is not None else "")
    return f"*{LABELS[p]}, {100 * s:g} %* {text} (n = {n})"


# ---- parsing ---------------------------------------------------------------------------------------


def test_a_claim_line_is_parsed_and_kept_in_experiment_json(tmp_path):
    path = tmp_path / "exp.cfg"
    path.write_text(
        PREFIX
        + "# a comment\nclaim FReP: beats Ori at 99 % = autoattack:  parameterization=hadamard sparsity=0.99 >"
        + " parameterization=plain   sparsity=0.990   # trailing comment\n"
        + "claim FReP is cheaper = train_seconds: parameterization=hadamard < parameterization=plain\n"
    )
    experiment = spec.parse(str(path))
    first, second = experiment.claims
    assert first == spec.Claim(
        "FReP: beats Ori at 99 %",
        "autoattack",
        ">",
        {"parameterization": "hadamard", "sparsity": "0.99"},
        {"parameterization": "plain", "sparsity": "0.990"},
        6,
    )
    assert (second.metric, second.op, second.line) == ("train_seconds", "<", 7)
    assert len(experiment.cells()) == 8  # claims add no cell
    assert experiment.to_dict()["claims"] == [
        {
            "label": "FReP: beats Ori at 99 %",
            "metric": "autoattack",
            "op": ">",
            "a": {"parameterization": "hadamard", "sparsity": "0.99"},
            "b": {"parameterization": "plain", "sparsity": "0.990"},
            "line": 6,
        },
        second.to_dict(),
    ]
    no_claims = tmp_path / "plain.cfg"
    no_claims.write_text(PREFIX)
    assert "claims" not in spec.parse(str(no_claims)).to_dict()


@pytest.mark.parametrize(
    "line, needle",
    [
        ("claim = autoattack: sparsity=0.9 > sparsity=0.99", "the claim has no label before `=`"),
        ("claim FReP wins", "no `=` after the claim's label"),
        ("claim FReP wins = autoattack sparsity=0.9 > sparsity=0.99", "no `:` after the metric"),
        ("claim FReP wins = robustness: sparsity=0.9 > sparsity=0.99", "unknown metric 'robustness'; allowed: "),
        ("claim FReP wins = autoattack: sparsity=0.9 sparsity=0.99", "no `>` or `<` between the two selectors"),
        ("claim FReP wins = autoattack: sparsity=0.9 > sparsity=0.99 < seed=1", "2 operators (> <), not one"),
        ("claim FReP wins = autoattack: > sparsity=0.99", "the selector left of the operator is empty"),
        ("claim FReP wins = autoattack: sparsity=0.9 > ", "the selector right of the operator is empty"),
        (
            "claim FReP wins = autoattack: sparsity > sparsity=0.99",
            "'sparsity' in the left selector is not a flag=value",
        ),
        ("claim FReP wins = autoattack: sparsity=0.9 seed=0 > sparsity=0.99", "seed=0 in the left selector"),
        ("claim FReP wins = autoattack: sparsity=0.9 sparsity=0.9 > sparsity=0.99", "sparsity is set twice"),
        ("claim FReP wins = autoattack: sparsity=0.9 > epochs=3", "epochs is not an axis of this file"),
        ("claim FReP wins = autoattack: sparsity=0.9 > sparsity=0.5", "not a value of the sparsity axis (0.9, 0.99)"),
        ("claim FReP wins = pgd: parameterization=channel > sparsity=0.9", "not a value of the parameterization"),
    ],
)
def test_a_bad_claim_line_is_one_line_naming_file_line_and_the_fix(tmp_path, line, needle):
    path = tmp_path / "exp.cfg"
    path.write_text(PREFIX + line + "\n")
    with pytest.raises(spec.ExperimentError) as info:
        spec.parse(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:5: ") and needle in message and "\n" not in message, message


def test_the_unknown_metric_error_lists_every_metric(tmp_path):
    path = tmp_path / "exp.cfg"
    path.write_text(PREFIX + "claim x = AA: sparsity=0.9 > sparsity=0.99\n")
    with pytest.raises(spec.ExperimentError) as info:
        spec.parse(str(path))
    assert all(m in str(info.value) for m in ("clean", "autoattack", "val_pgd", "train_seconds"))


# ---- verdicts ----------------------------------------------------------------------------------------


def test_each_claim_gets_its_verdict(normal):
    summary, _ = normal
    assert {c["label"]: c["verdict"] for c in summary["claims"]} == VERDICTS
    assert [c["label"] for c in summary["claims"]] == [c["label"] for c in CLAIMS]  # the file's order


def test_holds_with_the_numbers_of_both_rows(normal):
    _, text = normal
    d = 100 * (_stats("hadamard", 0.99, 0)[0] - _stats("plain", 0.99, 0)[0])
    assert _line(text, "FReP beats Ori at 99 %") == (
        "- **FReP beats Ori at 99 %** (AutoAttack, test, %; claimed higher): "
        f"{_side('hadamard', 0.99, 0)} vs {_side('plain', 0.99, 0)}, difference {d:+.1f} points: holds."
    )
    assert _line(text, "Ori beats FReP at 99 %").endswith(f"difference {-d:+.1f} points: does not hold.")


def test_inside_the_spread_is_the_sum_of_the_two_stds_not_the_larger(normal):
    """FReP 90 % minus Ori 90 %: larger than either std, smaller than both added."""
    summary, text = normal
    (claim,) = [c for c in summary["claims"] if c["label"] == "FReP beats Ori at 90 %"]
    a, b = _stats("hadamard", 0.9, 0), _stats("plain", 0.9, 0)
    assert max(a[1], b[1]) < a[0] - b[0] <= a[1] + b[1]
    assert claim["difference"] == pytest.approx(a[0] - b[0])
    assert claim["a"]["std"] == pytest.approx(a[1]) and claim["b"]["n"] == 2
    assert _line(text, "FReP beats Ori at 90 %").endswith(": inside the seed spread.")


def test_lower_is_claimed_with_less_than(normal):
    _, text = normal
    a, b = _stats("hadamard", 0.99, 2), _stats("plain", 0.99, 2)
    assert _line(text, "FReP trains faster") == (
        "- **FReP trains faster** (train time, s; claimed lower): "
        f"{_side('hadamard', 0.99, 2, 1.0)} vs {_side('plain', 0.99, 2, 1.0)}, difference {a[0] - b[0]:+.1f} s: holds."
    )
    assert _line(text, "FReP is less robust").endswith(": does not hold.")


def test_one_seed_shows_the_numbers_but_no_verdict(normal):
    _, text = normal
    line = _line(text, "FReP beats Ori at 99.5 %")
    assert f"{_side('hadamard', 0.995, 0)} vs {_side('plain', 0.995, 0)}" in line
    assert line.endswith("points: one seed: not judged.")


def test_a_side_without_finished_cells_is_not_measured_yet(normal):
    """The other side has numbers: shown, but nothing is judged."""
    summary, text = normal
    line = _line(text, "FReP at 99.8 % beats Ori at 99 %")
    assert line.endswith(
        f": `parameterization=hadamard sparsity=0.998` (no finished cell) vs {_side('plain', 0.99, 0)}: not measured yet."
    )
    (claim,) = [c for c in summary["claims"] if c["label"] == "FReP at 99.8 % beats Ori at 99 %"]
    assert claim["a"]["n"] == 0 and claim["b"]["n"] == 3 and claim["difference"] is None


def test_a_selector_matching_two_rows_names_them_and_is_a_note(normal):
    summary, text = normal
    line = _line(text, "FReP beats Ori anywhere")
    assert (
        "the first selector (`parameterization=hadamard`) matches 3 report rows (FReP, 90 %; FReP, 99 %; FReP, 99.5 %)"
        in line
    )
    assert "points" not in line and line.endswith("where a side must select one row.")
    assert any("'FReP beats Ori anywhere'" in p and "several report rows" in p for p in summary["problems"])


def test_val_pgd_is_the_last_epochs_validation_accuracy(normal):
    _, text = normal
    d = 100 * (_stats("hadamard", 0.99, 1)[0] - _stats("plain", 0.99, 1)[0])
    assert _line(text, "FReP validates better") == (
        "- **FReP validates better** (PGD, validation, last epoch, %; claimed higher): "
        f"{_side('hadamard', 0.99, 1)} vs {_side('plain', 0.99, 1)}, difference {d:+.1f} points: holds."
    )


def test_a_validation_only_experiment_judges_no_test_metric(validation):
    summary, text = validation
    verdicts = {c["label"]: c["verdict"] for c in summary["claims"]}
    for claim in CLAIMS:
        if claim["metric"] == "autoattack":
            assert verdicts[claim["label"]] == claims_mod.VALIDATION_ONLY
    assert verdicts["FReP validates better"] == "holds" and verdicts["FReP trains faster"] == "holds"
    section = _section(text)
    line = _line(text, "FReP beats Ori at 99 %")
    assert line.endswith(
        "not evaluated: test metric in a validation-only experiment (its settings are chosen on the validation split)."
    )
    for claim in CLAIMS:  # no test number, not even the matched rows
        if claim["metric"] == "autoattack":
            assert "*" not in _line(text, claim["label"]).split("):", 1)[1]
    test_numbers = {f"{100 * v[0]:.1f}" for values in GRID.values() for v in values} | {"98.8"}
    val_numbers = {f"{100 * v[1]:.1f}" for values in GRID.values() for v in values}
    assert not any(n in section for n in test_numbers - val_numbers)
    (claim,) = [c for c in summary["claims"] if c["label"] == "FReP beats Ori at 99 %"]
    assert claim["a"] is None and claim["b"] is None


def test_a_selector_speaks_the_experiment_files_terms_not_the_resolved_config():
    """--epochs=100 with --epoch_scale=0.3 is stored as epochs 30 in config.json."""
    from frep_tf.experiments.report.cells import Cell

    listed = Cell("a", "cells/a", {"epochs": "100", "sparsity": "0.99"}, config={"epochs": 30, "sparsity": 0.99})
    assert claims_mod.matches(listed, {"epochs": "100", "sparsity": "0.990"})
    assert not claims_mod.matches(listed, {"epochs": "30"})
    discovered = Cell("b", "cells/b", {}, config={"epochs": 30, "sparsity": 0.99, "structured": False})
    assert claims_mod.matches(discovered, {"epochs": "30", "structured": "false"})
    assert not claims_mod.matches(discovered, {"structured": "0"}) and not claims_mod.matches(
        discovered, {"epochs": "3"}
    )


# ---- the section ----------------------------------------------------------------------------------


def test_the_section_follows_the_first_table_with_the_rule(normal, validation):
    _, text = normal
    headers = [line for line in text.splitlines() if line.startswith("## ")]
    assert headers[:3] == [
        "## Robust accuracy (paper Tables I / IV)",
        "## Claims",
        "## Sparsity measures and robustness",
    ]
    section = _section(text)
    assert section.splitlines()[1] == claims_mod.RULE
    assert "std_A + std_B" not in section and "two standard deviations added" in section
    assert len([line for line in section.splitlines() if line.startswith("- **")]) == len(CLAIMS)
    _, text = validation
    headers = [line for line in text.splitlines() if line.startswith("## ")]
    assert headers[:3] == ["## Validation (the split settings are chosen on)", "## Claims", "## Exported models"]


def test_no_claims_no_section(tmp_path):
    summary = write_report(make_workdir(str(tmp_path)))
    assert summary["claims"] == []
    assert "## Claims" not in open(summary["report"]).read()


def test_damaged_claims_in_experiment_json_are_one_line(tmp_path):
    from frep_tf.experiments.report import ReportError

    make_workdir(str(tmp_path), claims=[{"label": "x", "metric": "pgd", "op": "=", "a": {}, "b": {}}])
    with pytest.raises(ReportError, match=r"experiment.json: claims\[0\] is not \{label, metric, op \(> or <\)"):
        write_report(str(tmp_path))


# ---- main.py --mode=report --experiment=FILE ------------------------------------------------------


def _main(*args):
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_main_reads_claims_from_the_experiment_file_and_keeps_them(tmp_path):
    workdir = make_workdir(str(tmp_path / "grid"))  # experiment.json without claims
    path = tmp_path / "grid.cfg"
    path.write_text(
        "--dataset=digits\naxis parameterization = plain | hadamard\naxis sparsity = 0.9 | 0.99 | 0.995 | 0.998\n"
        "axis seed = 0 | 1 | 2\n"
        "claim FReP beats Ori at 99 % = autoattack: parameterization=hadamard sparsity=0.99 > parameterization=plain sparsity=0.99\n"
        "claim FReP trains faster = train_seconds: parameterization=hadamard sparsity=0.99 < parameterization=plain sparsity=0.99\n"
    )
    proc = _main("--mode=report", f"--workdir={workdir}", f"--experiment={path}")
    assert proc.returncode == 0, proc.stderr
    text = open(os.path.join(workdir, "report.md")).read()
    lines = [line for line in _section(text).splitlines() if line.startswith("- **")]
    assert [line.split("**")[1] for line in lines] == ["FReP beats Ori at 99 %", "FReP trains faster"]
    assert lines[0].endswith(": holds.") and lines[1].endswith(": holds.")
    stored = json.load(open(os.path.join(workdir, "experiment.json")))
    assert stored["claims"] == [c.to_dict() for c in spec.parse(str(path)).claims]
    # The file's experiment.json as the runner writes it (its cells and axes too).
    assert stored == spec.parse(str(path)).to_dict()
    # Stored: a later report without --experiment keeps them.
    os.remove(os.path.join(workdir, "report.md"))
    assert runner.write_report(workdir) and _section(open(os.path.join(workdir, "report.md")).read()) == _section(text)

    # Another experiment's file: one line naming both, nothing written.
    other = tmp_path / "other.cfg"
    other.write_text(path.read_text())
    before = open(os.path.join(workdir, "experiment.json")).read()
    proc = _main("--mode=report", f"--workdir={workdir}", f"--experiment={other}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert "experiment 'other'" in errors[0] and "experiment 'grid'" in errors[0]
    assert open(os.path.join(workdir, "experiment.json")).read() == before


def test_experiment_is_refused_outside_experiment_cost_and_report_modes(tmp_path):
    from frep_tf.validation import validate

    cfg = Config.from_flat({"mode": "train", "experiment": "x.cfg", "workdir": str(tmp_path / "w")})
    with pytest.raises(
        ConfigError, match=r"--experiment=x.cfg: only with --mode=experiment, --mode=cost or --mode=report"
    ):
        validate(cfg)


def test_a_workdir_without_experiment_json_gets_the_files(tmp_path):
    """A results directory of cells shared from another experiment: the file's experiment.json is written,
    as the runner would, so the cells' flags (and the claims) are there for later reports too."""
    workdir = make_workdir(str(tmp_path / "grid"))
    os.remove(os.path.join(workdir, "experiment.json"))
    path = tmp_path / "grid.cfg"
    path.write_text(
        "--dataset=digits\naxis parameterization = plain | hadamard\naxis sparsity = 0.9 | 0.99 | 0.995 | 0.998\n"
        "axis seed = 0 | 1 | 2\n"
        "claim FReP beats Ori at 99 % = autoattack: parameterization=hadamard sparsity=0.99 > parameterization=plain sparsity=0.99\n"
    )
    runner.write_report(workdir, experiment_path=str(path))
    assert json.load(open(os.path.join(workdir, "experiment.json"))) == spec.parse(str(path)).to_dict()
    text = open(os.path.join(workdir, "report.md")).read()
    assert "Cells: 24 — 13 finished, 0 failed, 11 pending" in text
    assert _line(text, "FReP beats Ori at 99 %").endswith(": holds.")
