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

    def test_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole test split as (x float32 NHWC in [0, 1], y int32), in `test` order."""
        xs, ys = [], []
        for x, y in self.test.as_numpy_iterator():
            xs.append(x)
            ys.append(y)
        return np.concatenate(xs).astype(np.float32, copy=False), np.concatenate(ys).astype(np.int32, copy=False)


def test_arrays(splits: Splits) -> tuple[np.ndarray, np.ndarray]:
    """Function form of `Splits.test_arrays`, for attack code that takes numpy arrays."""
    return splits.test_arrays()


# Not a pytest test, although the name starts with "test_" (tests import it).
test_arrays.__test__ = False
