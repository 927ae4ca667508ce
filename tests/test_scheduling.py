"""The suite's scheduling over pytest-xdist workers (tests/conftest.py) holds: marks added by a collection hook
put tests on one worker under --dist=loadgroup. pytest 9.2 with pytest-xdist 3.8 silently drops them (the
group suffix xdist writes into the node id no longer takes), and every costly shared run then runs on both
workers; requirements.txt keeps pytest below 9.2 until xdist handles it."""

import re
import subprocess
import sys

CONFTEST = """
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.name.startswith("test_shared"):
            item.add_marker(pytest.mark.xdist_group("shared"))
"""

TESTS = """
import time

import pytest

@pytest.mark.parametrize("i", range(4))
def test_shared(i):
    time.sleep(0.2)

@pytest.mark.parametrize("i", range(4))
def test_free(i):
    time.sleep(0.2)
"""


def test_tests_grouped_by_a_collection_hook_run_on_one_worker(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_grouped.py").write_text(TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not this repository's pyproject.toml
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist=loadgroup", "-v", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    workers: dict[str, set[str]] = {}
    for worker, name in re.findall(r"\[(gw\d)\].*PASSED \S*::(test_\w+)\[", proc.stdout):
        workers.setdefault(name, set()).add(worker)
    assert set(workers) == {"test_shared", "test_free"}, proc.stdout[-3000:]
    assert len(workers["test_shared"]) == 1, f"the group ran on {sorted(workers['test_shared'])}"
