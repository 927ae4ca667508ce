"""Datasets as batched tf.data pipelines: tfds (CIFAR, SVHN), Tiny-ImageNet, digits, synthetic, user data.

    from frep_tf import data
    splits = data.load_dataset("cifar10", data_dir="/data/tfds", batch_size=128)
    model.fit(splits.train, validation_data=splits.val)
    x_test, y_test = data.dataset_arrays(splits.test)

Every user-facing problem raises `DatasetError` with a one-line message. `check_available(name,
data_dir=...)` finds missing data in about a second without importing TensorFlow: entry points call
it first. Importing this package imports neither TensorFlow nor tensorflow_datasets; loaders
import them when called.
"""

from frep_tf.data.errors import DatasetError
from frep_tf.data.registry import (
    KNOWN_DATASETS,
    USER_DATASET_PREFIXES,
    check_available,
    check_dataset_name,
    load_dataset,
)
from frep_tf.data.splits import DatasetInfo, Splits, dataset_arrays

__all__ = [
    "KNOWN_DATASETS",
    "USER_DATASET_PREFIXES",
    "DatasetError",
    "DatasetInfo",
    "Splits",
    "check_available",
    "check_dataset_name",
    "load_dataset",
    "dataset_arrays",
]
