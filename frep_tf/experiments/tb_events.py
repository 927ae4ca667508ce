"""TensorBoard event files read without TensorFlow: TFRecord framing (~10 lines) and the protos the
tensorboard package ships (`tensorboard.compat.proto`, protobuf only). tensorboard's own loaders
(event_file_loader, EventAccumulator) import TensorFlow whenever it is installed, which costs seconds
and memory in a report."""

from __future__ import annotations

import os
import struct

import numpy as np


class EventFileError(ValueError):
    """An event file that cannot be read; the message names it."""


def writer_processes(names) -> set:
    """(host, pid) of the processes that wrote these TensorBoard event files: one process writes
    several files (one per summary writer), named events.out.tfevents.<time>.<host>.<pid>.<n>.v2."""
    found = set()
    for name in names:
        if name.startswith("events.out.tfevents."):
            parts = name.split(".")
            found.add(tuple(parts[4:-2]) if len(parts) >= 8 else (name,))
    return found


def _events(path: str):
    """The Event protos of one TFRecord event file; a record cut short (a killed writer) ends it."""
    from tensorboard.compat.proto import event_pb2

    with open(path, "rb") as fh:
        data = fh.read()
    pos = 0
    # A record: uint64 length, uint32 CRC of the length, the bytes, uint32 CRC of the bytes.
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(data):
            return
        event = event_pb2.Event()
        event.ParseFromString(data[start:end])
        yield event
        pos = end + 4


_TENSOR_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 19: np.float16}


def _scalar_of(value) -> float | None:
    """The number a summary value holds (tf.summary.scalar's tensor or TF1's simple_value), else None."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind != "tensor":
        return None
    t = value.tensor
    if len(t.tensor_shape.dim) or t.dtype not in _TENSOR_DTYPES:
        return None  # histograms, images, text
    if t.tensor_content:
        return float(np.frombuffer(t.tensor_content, dtype=_TENSOR_DTYPES[t.dtype])[0])
    for field in (t.float_val, t.double_val, t.int_val, t.int64_val, t.half_val):
        if len(field):
            return float(field[0])
    return None


def read_scalars(log_dir: str) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar summary under `log_dir` (its event files, not subdirectories).
    A resumed run writes an epoch again in a new file: the value written last counts."""
    latest: dict[tuple[str, int], tuple[float, float]] = {}
    if not os.path.isdir(log_dir):
        return {}
    for name in sorted(os.listdir(log_dir)):
        if not name.startswith("events.out.tfevents"):
            continue
        try:
            for event in _events(os.path.join(log_dir, name)):
                for value in event.summary.value:
                    x = _scalar_of(value)
                    key = (value.tag, int(event.step))
                    if x is not None and (key not in latest or event.wall_time >= latest[key][0]):
                        latest[key] = (event.wall_time, x)
        except Exception as exc:  # noqa: BLE001 - a damaged file costs its curves, not the report
            raise EventFileError(
                f"{os.path.join(log_dir, name)}: not a readable TensorBoard event file ({exc})"
            ) from None
    scalars: dict[str, dict[int, float]] = {}
    for (tag, step), (_, x) in sorted(latest.items()):
        scalars.setdefault(tag, {})[step] = x
    return scalars
