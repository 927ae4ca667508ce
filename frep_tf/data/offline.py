"""Datasets that need no download: scikit-learn's bundled digits and synthetic random tensors."""

from __future__ import annotations

import numpy as np

from frep_tf.data.source import ArraySource

DIGITS_TEST_SIZE = 0.2
DIGITS_SPLIT_SEED = 0


def load_digits() -> ArraySource:
    """scikit-learn's 1797 8x8 digits, scaled to [0, 1], with the project's fixed test split.

    The test split is exactly `train_test_split(images, labels, test_size=0.2, random_state=0,
    stratify=labels)` (360 images) so results compare across runs and with the issue's protocol.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., np.newaxis]  # pixel values are 0..16
    labels = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        labels,
        test_size=DIGITS_TEST_SIZE,
        random_state=DIGITS_SPLIT_SEED,
        stratify=labels,
    )
    return ArraySource(
        name="digits",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        augmentation="none",
    )


def load_synthetic(*, shape: tuple[int, int, int], num_classes: int, sizes: tuple[int, int], seed: int) -> ArraySource:
    """Uniform random float32 images in [0, 1] and uniform random labels, for smoke tests and benchmarks."""
    rng = np.random.default_rng(seed)
    num_train, num_test = sizes
    x = rng.random((num_train + num_test, *shape), dtype=np.float32)
    y = rng.integers(0, num_classes, size=num_train + num_test).astype(np.int32)
    return ArraySource(
        name="synthetic",
        x_train=x[:num_train],
        y_train=y[:num_train],
        x_test=x[num_train:],
        y_test=y[num_train:],
        num_classes=num_classes,
        augmentation="none",
    )
