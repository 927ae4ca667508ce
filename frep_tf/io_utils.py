"""Small helpers for files that must never be seen half-written.

The pattern everywhere: write under a temporary name in the same directory, fsync, rename over the
final name (atomic on POSIX), fsync the directory. A kill at any moment leaves either the old file,
the new file, or no file, plus at most a temporary that starts with "." and is removed next time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile


def write_json_atomic(path: str, payload) -> None:
    """Write JSON to a temporary file in the same directory, fsync it, then rename over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), dir=directory)
    try:
        # mkstemp makes the file owner-only (0600); give it the mode an ordinary open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True, default=_jsonable)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(directory)


def temporary_prefix(path: str) -> str:
    """The prefix of `write_json_atomic`'s temporaries for `path` (what a kill can leave behind)."""
    return f".{os.path.basename(path)}."


def read_json(path: str):
    """Parsed JSON, or None if `path` does not exist. Raises ValueError (one line) if unreadable."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not readable JSON ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc


def fsync_dir(directory: str) -> None:
    """Make a rename inside `directory` durable (a power cut after rename would otherwise lose it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. platforms where directories cannot be opened; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove(path: str) -> None:
    """Delete a file or a directory tree if it exists."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _jsonable(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
