"""Numbers must not move when code moves: two small deterministic runs through main.py (the quickstart's
flags and HYDRA's three stages, every flag written out) reproduce the recorded exported weights bit for
bit and the same results.json apart from times (tests/golden/record.py recorded them; re-record only
when numbers are meant to change, and say why in the commit). One recording per kind of machine: the
bits depend on the CPU's instruction set (record.machine())."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
import record  # noqa: E402

GOLDEN = json.load(open(record.GOLDEN_FILE))


@pytest.mark.parametrize("name", sorted(record.RUNS))
def test_golden_run_is_reproduced_bit_for_bit(name, tmp_path):
    here = record.machine()
    recording = record.recording_for(GOLDEN, here)
    known = [r["machine"] for r in GOLDEN["recordings"]]
    assert recording is not None, f"no recording for {here} (recorded: {known}): record on this kind of machine"
    golden = recording["runs"][name]
    assert golden["flags"] == record.RUNS[name], "the golden run's flags changed: re-record on purpose or revert"
    got = record.run(name, str(tmp_path / name))
    changed = sorted(k for k in golden["weights"] if got["weights"].get(k) != golden["weights"][k])
    assert not changed and set(got["weights"]) == set(golden["weights"]), f"exported weights differ: {changed[:5]}"
    assert got["results"] == golden["results"]
