"""Cells that share a run share it: IWI's stage 1 (its small sparse source, an ordinary run) is a finished
lottery cell of the same experiment, copied in by the runner instead of trained again, and the IWI cell
ends exactly as an IWI run that trained its own source."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest

from frep_tf.config import Config
from frep_tf.experiments import share
from tests.test_methods_lottery import _drop
from tests.test_methods_pipeline import TINY, _exported, _strip, run_main

FLAGS = [*TINY, "--epochs=1", "--prune_epoch=0", "--deterministic"]


@pytest.mark.slow
def test_iwi_starts_from_the_finished_lottery_cell_and_ends_as_if_it_trained_its_source(tmp_path):
    experiment = tmp_path / "share.cfg"
    # The lottery cell exports more than IWI's source does (--export differs): still the same run.
    experiment.write_text(
        "\n".join(FLAGS) + "\naxis method export = lottery keras,tflite_sparse | iwi keras\n", encoding="utf-8"
    )
    workdir = tmp_path / "grid"
    proc = run_main(
        "--mode=experiment",
        f"--experiment={experiment}",
        f"--workdir={workdir}",
        f"--experiment_results={tmp_path / 'kept'}",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lottery = workdir / "cells" / "method=lottery,export=keras,tflite_sparse"
    iwi = workdir / "cells" / "method=iwi,export=keras"
    source = iwi / "source"
    assert "copied, not trained again" in proc.stdout
    assert json.loads((source / "shared_from.json").read_text())["cell"] == str(lottery)
    assert filecmp.cmp(source / "export" / "model.keras", lottery / "export" / "model.keras", shallow=False)
    assert not (source / "tb").exists() and not (source / "checkpoint").exists()  # never trained there
    results = json.loads((iwi / "results.json").read_text())
    assert results["method"]["source"]["shared_from"] == str(lottery)

    # The same IWI run on its own: it trains its source in <workdir>/source and ends identically.
    alone = tmp_path / "alone"
    proc = run_main(*FLAGS, "--method=iwi", "--export=keras", f"--workdir={alone}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (alone / "source" / "tb").is_dir()
    got = json.loads((alone / "results.json").read_text())
    drop = ("path", "shared_from", "seconds")
    assert _strip(_drop(got, drop)) == _strip(_drop(results, drop))
    for a, b in zip(_exported(alone).weights, _exported(iwi).weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_a_cell_that_trains_something_else_is_not_shared(tmp_path):
    wanted = Config.from_flat(
        {"dataset": "digits", "method": "lottery", "sparsity": 0.9, "workdir": str(tmp_path / "a")}
    )
    same = Config.from_flat({**wanted.flat(), "workdir": str(tmp_path / "b"), "export": "keras,tflite_sparse"})
    other = Config.from_flat({**wanted.flat(), "sparsity": 0.99})
    assert share.same_run(same.to_dict(), wanted)
    assert not share.same_run(other.to_dict(), wanted)
