"""What `load_dataset` returns: the three batched splits and a description of the data."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Facts about a loaded dataset, for logs, `config.json` and model construction."""

    name: str
    image_shape: tuple[int, int, int]  # (H, W, C) of the batches the model sees
    num_classes: int
    num_train: int  # training examples after the validation carve-out
    num_val: int
    num_test: int
    augmentation: str  # human description of the training augmentation, "none" if there is none


@dataclasses.dataclass(frozen=True)
class Splits:
    """Batched `tf.data` pipelines of (x float32 in [0, 1] NHWC, y int32).

    `train` is shuffled every epoch, augmented and drops the last partial batch; `val` (None when
    no validation split was asked for) and `test` are neither shuffled nor augmented and keep
    every example.
    """

    train: Any  # tf.data.Dataset
    val: Any  # tf.data.Dataset | None
    test: Any  # tf.data.Dataset
    info: DatasetInfo
    # train_from(epoch) -> tf.data.Dataset: the training batches of epochs `epoch`, `epoch` + 1, ...
    # back to back, endless (use with fit(steps_per_epoch=...)). Each epoch's batches are the same
    # whichever epoch the stream starts from, so a run resumed at epoch k trains on what an
    # uninterrupted run would have.
    train_from: Any = None


def dataset_arrays(dataset, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A batched (x, y) dataset as numpy arrays (x float32 NHWC in [0, 1], y int32), in order: the first
    `limit` examples, or all with 0; empty arrays for no dataset."""
    xs, ys, n = [], [], 0
    if dataset is None:
        return np.zeros((0,), np.float32), np.zeros((0,), np.int32)
    for x, y in dataset:
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
        n += len(ys[-1])
        if limit and n >= limit:
            break
    if not xs:
        return np.zeros((0,), np.float32), np.zeros((0,), np.int32)
    x, y = np.concatenate(xs).astype(np.float32, copy=False), np.concatenate(ys).astype(np.int32)
    return (x[:limit], y[:limit]) if limit else (x, y)
