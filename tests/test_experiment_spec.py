"""Experiment files: parsing, the grid of cells, and one-line errors naming file, line and value."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

import flags
from frep_tf.experiments import runner, spec

REPO = runner.REPO_ROOT


def _write(tmp_path, text, name="exp.cfg"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_grid_is_the_product_of_the_axes_first_axis_slowest(tmp_path):
    path = _write(
        tmp_path,
        "# comment\n--dataset=digits   # trailing comment\n--arch=small_cnn\n"
        "axis parameterization = plain | hadamard\naxis sparsity structured = 0.9 false | 0.5 true\n"
        "axis seed = 0|1|2\n",
    )
    experiment = spec.parse(str(path))
    assert experiment.base_args == ("--dataset=digits", "--arch=small_cnn")
    cells = experiment.cells()
    assert len(cells) == 2 * 2 * 3
    assert cells[0].flags == {"parameterization": "plain", "sparsity": "0.9", "structured": "false", "seed": "0"}
    assert cells[1].flags["seed"] == "1" and cells[3].flags["sparsity"] == "0.5"
    assert cells[-1].flags == {"parameterization": "hadamard", "sparsity": "0.5", "structured": "true", "seed": "2"}
    assert len({c.name for c in cells}) == len(cells)
    assert all(c.dir.startswith("cells/") and "/" not in c.name for c in cells)
    assert cells[0].lines == {"parameterization": 4, "sparsity": 5, "structured": 5, "seed": 6}


def test_values_may_hold_commas_and_flagfiles_resolve_next_to_the_file(tmp_path):
    (tmp_path / "base.cfg").write_text("--dataset=digits\n")
    path = _write(tmp_path, "--flagfile=base.cfg\naxis eval_attacks = clean,pgd | clean,fgsm,pgd\n")
    experiment = spec.parse(str(path))
    assert experiment.base_args == (f"--flagfile={tmp_path / 'base.cfg'}",)
    assert [c.flags["eval_attacks"] for c in experiment.cells()] == ["clean,pgd", "clean,fgsm,pgd"]


def test_an_axis_line_ending_in_equals_or_bar_continues_on_the_next_line(tmp_path):
    path = _write(
        tmp_path,
        "--dataset=digits\naxis sparsity structured =\n  0.9 false |   # one cell per line\n\n  0.5 true\n"
        "axis seed = 0 |\n 1\n--arch=small_cnn\n",
    )
    experiment = spec.parse(str(path))
    assert experiment.base_args == ("--dataset=digits", "--arch=small_cnn")
    assert [(c.flags["sparsity"], c.flags["structured"], c.flags["seed"]) for c in experiment.cells()] == [
        ("0.9", "false", "0"),
        ("0.9", "false", "1"),
        ("0.5", "true", "0"),
        ("0.5", "true", "1"),
    ]
    assert experiment.cells()[0].lines == {"sparsity": 2, "structured": 2, "seed": 6}
    dangling = _write(tmp_path, "--dataset=digits\naxis seed = 0 |\n", name="dangling.cfg")
    with pytest.raises(spec.ExperimentError, match=f"{dangling}:2: .*empty value"):
        spec.parse(str(dangling))


@pytest.mark.parametrize(
    "text, line, needle",
    [
        ("--dataset=digits\naxis seed =\n", 2, "axis seed is empty"),
        ("--dataset=digits\naxis seed = 0 | | 1\n", 2, "empty value"),
        ("--dataset=digits\naxis seed = 0\naxis seed = 1\n", 3, "already has an axis on line 2"),
        ("--dataset=digits\naxis sparsity structured = 0.9\n", 2, "expected 2"),
        ("--dataset=digits\nseeds 0 1\n", 2, "neither a --flag=value line nor"),
        ("--workdir=/tmp/x\n", 1, "--workdir is set by the experiment runner"),
        ("--dataset=digits\naxis mode = train\n", 2, "--mode is set by the experiment runner"),
        ("--flagfile=missing.cfg\n", 1, "--flagfile=missing.cfg: no such file"),
        ("--dataset=digits\naxis seed = 0 | 0\n", 2, "listed twice"),
    ],
)
def test_bad_files_name_the_line(tmp_path, text, line, needle):
    path = _write(tmp_path, text)
    with pytest.raises(spec.ExperimentError) as info:
        spec.parse(str(path))
    message = str(info.value)
    assert f"{path}:{line}:" in message and needle in message and "\n" not in message


@pytest.mark.parametrize(
    "axis, needle",
    [
        ("axis no_such_flag = 1 | 2", "axis no_such_flag, value '1'"),
        (
            "axis sparsity = 0.9 | 1.5",
            "axis sparsity, value '1.5' (cell sparsity=1.5): --sparsity=1.5: must lie in [0, 1)",
        ),
        ("axis parameterization = plain | fancy", "value 'fancy'"),
        ("axis epochs = 2 | many", "value 'many'"),
    ],
)
def test_bad_axis_values_are_refused_before_any_cell_runs(tmp_path, axis, needle):
    path = _write(tmp_path, f"--dataset=digits\n--arch=small_cnn\n--epochs=4\n--prune_epoch=1\n{axis}\n")
    with pytest.raises(spec.ExperimentError) as info:
        runner.check(spec.parse(str(path)), str(tmp_path / "work"), flags.parse_args)
    assert f"{path}:5: " in str(info.value) and needle in str(info.value)
    assert not (tmp_path / "work").exists()


def test_a_combination_that_no_cell_may_run_names_its_lines(tmp_path):
    path = _write(tmp_path, "--dataset=digits\n--arch=small_cnn\naxis epochs = 2 | 10\naxis prune_epoch = 1 | 5\n")
    with pytest.raises(
        spec.ExperimentError, match=r"exp\.cfg:4: axis prune_epoch, value '5' \(cell epochs=2,prune_epoch=5\)"
    ):
        runner.check(spec.parse(str(path)), str(tmp_path / "work"), flags.parse_args)


@pytest.mark.parametrize("shard, expected", [("", (0, 1)), ("0/2", (0, 2)), ("2/3", (2, 3))])
def test_shards(shard, expected):
    assert runner.parse_shard(shard) == expected


@pytest.mark.parametrize("shard", ["2/2", "1", "a/b", "0/0", "-1/2"])
def test_bad_shards(shard):
    with pytest.raises(spec.ExperimentError, match="--experiment_shard"):
        runner.parse_shard(shard)


def test_main_refuses_a_bad_experiment_in_one_line_exit_2(tmp_path):
    path = _write(tmp_path, "--dataset=digits\naxis sparsity = 0.5 | 2\n")
    workdir = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "main.py", "--mode=experiment", f"--experiment={path}", f"--workdir={workdir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"{path}:2:" in lines[0] and "'2'" in lines[0]
    assert not workdir.exists()


@pytest.mark.parametrize("name", sorted(p.name for p in (pathlib.Path(REPO) / "configs" / "experiments").glob("*.cfg")))
def test_shipped_experiments_parse_and_every_cell_validates(tmp_path, name):
    experiment = spec.parse(str(pathlib.Path(REPO) / "configs" / "experiments" / name))
    cells = runner.check(experiment, str(tmp_path / "work"), flags.parse_args)
    assert cells and len({c.name for c in cells}) == len(cells)
