"""What a dataset loader hands to the input pipeline: raw images and labels, not yet split or batched.

Images stay in their stored dtype (uint8 in [0, 255], or float32 already in [0, 1]) until a batch
is formed, so caches and shuffle buffers hold a quarter of the bytes of float32 images.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from frep_tf.data.errors import DatasetError


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """A dataset held in memory as numpy arrays (digits, synthetic, npz:, folder:)."""

    name: str
    x_train: np.ndarray  # (N, H, W, C), uint8 or float32 in [0, 1]
    y_train: np.ndarray  # (N,), int32 in [0, num_classes)
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    augmentation: str  # default policy name, see augment.POLICIES

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])


@dataclasses.dataclass(frozen=True)
class StreamSource:
    """A dataset read as unbatched `tf.data` streams of (image, label) (tfds datasets).

    `train` must yield its examples in the same order every time it is iterated: the validation
    split is carved from it by position.
    """

    name: str
    train: Any  # tf.data.Dataset
    test: Any  # tf.data.Dataset
    num_train: int
    num_test: int
    image_shape: tuple[int, int, int]
    num_classes: int
    augmentation: str


def check_images(x: np.ndarray, *, what: str) -> np.ndarray:
    """Validates user image arrays; returns (N, H, W, C) uint8 or float32 in [0, 1].

    Integer images must lie in [0, 255] and float images in [0, 1]; (N, H, W) gains a channel axis.
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise DatasetError(f"{what}: images must have shape (N, H, W, C) or (N, H, W); received shape {x.shape}")
    if x.shape[0] == 0 or min(x.shape[1:]) == 0:
        raise DatasetError(f"{what}: no images (shape {x.shape})")
    if x.shape[-1] not in (1, 3):
        raise DatasetError(f"{what}: images must have 1 or 3 channels (last axis); received shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise DatasetError(f"{what}: integer pixel values must lie in [0, 255]; found [{lo}, {hi}]")
        return x.astype(np.uint8, copy=False)
    if np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x)
        if not finite.all():
            bad = int(x.size - finite.sum())
            raise DatasetError(f"{what}: {bad} pixel values are NaN or infinite; all pixels must be finite")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise DatasetError(
                f"{what}: float pixel values must lie in [0, 1] (store uint8 for [0, 255]); found [{lo:g}, {hi:g}]"
            )
        return x.astype(np.float32, copy=False)
    raise DatasetError(f"{what}: images must be an integer or float array; received dtype {x.dtype}")


def check_labels(y: np.ndarray, *, what: str, num_images: int, num_classes: int | None = None) -> np.ndarray:
    """Validates user labels; returns (N,) int32.

    Labels are class indices: integers (or integral floats) >= 0 and, when `num_classes` is given,
    below it. Shape (N,) or (N, 1).
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DatasetError(f"{what}: labels must be class indices of shape (N,); received shape {y.shape}")
    if y.shape[0] != num_images:
        raise DatasetError(f"{what}: {y.shape[0]} labels for {num_images} images; need one label per image")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or not np.all(y == np.round(y)):
            raise DatasetError(f"{what}: labels must be whole class indices; found non-integer values")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{what}: labels must be integer class indices; received dtype {y.dtype}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise DatasetError(f"{what}: labels must be >= 0; found {lo}")
    if num_classes is not None and hi >= num_classes:
        raise DatasetError(
            f"{what}: label {hi} is out of range; labels must lie in [0, {num_classes - 1}] "
            f"({num_classes} classes in the training labels)"
        )
    return y.astype(np.int32)
