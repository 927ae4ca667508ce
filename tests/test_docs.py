"""The documentation stays true: docs/flags.md is what docs/make_flags.py generates from frep_tf/config.py,
every relative link resolves, the README's test command is the one .ci/run runs, and no tracked file
points at things outside the repository (internal tracker numbers, design files that are not here).

Fast and TensorFlow-free: config.py is plain Python, everything else is text.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Built from pieces so that this file does not match its own patterns.
FORBIDDEN = [
    re.compile(r"\bissues?\s+\d+", re.IGNORECASE),
    re.compile("DESIGN" + r"\s*§"),
    re.compile("DESIGN" + r"\.md"),
    re.compile("STYLE" + r"\.md"),
    re.compile(r"\.\./" + "shared"),
]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _make_flags():
    spec = importlib.util.spec_from_file_location("make_flags", DOCS / "make_flags.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flags_md_is_generated_from_the_config():
    expected = _make_flags().render()
    actual = (DOCS / "flags.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/flags.md is out of date: run `python docs/make_flags.py > docs/flags.md`"


def test_flags_md_lists_every_flag():
    import dataclasses

    from frep_tf.config import SECTIONS

    text = (DOCS / "flags.md").read_text(encoding="utf-8")
    missing = [f.name for k in SECTIONS.values() for f in dataclasses.fields(k) if f"`--{f.name}`" not in text]
    assert not missing, missing


def _markdown_files() -> list[pathlib.Path]:
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted(DOCS.glob("*.md"))]


def _anchors(path: pathlib.Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    anchors = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        anchors.add(slug)
    return anchors


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # links inside code blocks are not links
    broken = []
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target + " (no such heading)")
    assert not broken, f"{path.relative_to(ROOT)}: {broken}"


def test_readme_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [line.strip() for line in ci.splitlines() if line.strip().startswith(".venv/bin/")]
    assert commands, ".ci/run runs no .venv/bin/ command"
    missing = [c for c in commands if c not in readme]
    assert not missing, f"README.md does not show .ci/run's commands: {missing}"
    setup = "python3 -m venv .venv && .venv/bin/pip install"
    assert setup in ci and setup in readme


def _tracked_text_files() -> list[pathlib.Path]:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
        ).stdout.decode()
        names = out.split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but the environment
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if not skip & set(p.relative_to(ROOT).parts)]
    files = []
    for name in names:
        path = ROOT / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (figures, npz)
        files.append(path)
    return files


def test_no_references_outside_the_repository():
    found = []
    for path in _tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if any(p.search(line) for p in FORBIDDEN):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "internal references (tracker numbers, design files not in the repository):\n" + "\n".join(found)
