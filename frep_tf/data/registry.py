"""Dataset names and `load_dataset`, the one entry point of the data package."""

from __future__ import annotations

import numbers
import pathlib

from frep_tf.data.errors import DatasetError
from frep_tf.data.splits import Splits

KNOWN_DATASETS = ("digits", "synthetic", "fashion_mnist", "cifar10", "cifar100", "svhn", "tiny_imagenet")
USER_DATASET_PREFIXES = ("folder:", "npz:")


def check_dataset_name(name: str) -> None:
    """Raises DatasetError unless `name` is a known dataset or `folder:PATH` / `npz:PATH`."""
    if not isinstance(name, str):
        raise DatasetError(f"--dataset must be a string; received: {name!r}")
    if name in KNOWN_DATASETS:
        return
    for prefix in USER_DATASET_PREFIXES:
        if name.startswith(prefix):
            if not name[len(prefix) :]:
                raise DatasetError(f"--dataset={name}: give a path after {prefix!r}, e.g. {prefix}/data/mine")
            return
    allowed = ", ".join(KNOWN_DATASETS + tuple(p + "PATH" for p in USER_DATASET_PREFIXES))
    raise DatasetError(f"--dataset={name}: unknown dataset; allowed: {allowed}")


def check_available(
    name: str, *, data_dir: str | None = None, download: bool = False, svhn_extra: bool = False
) -> None:
    """Raises DatasetError now if `load_dataset(name, ...)` could not find its data.

    Cheap and TensorFlow-free (tfds metadata and file checks, about a second), so an entry point
    can call it before importing TensorFlow and building models: with no network and no prepared
    data the user gets the message in seconds. Does not validate the data's contents.
    """
    check_dataset_name(name)
    if svhn_extra and name != "svhn":
        raise DatasetError(f"--svhn_extra applies only to --dataset=svhn; received --dataset={name}")
    if name in ("cifar10", "cifar100", "svhn"):
        from frep_tf.data import tfds_loaders

        tfds_loaders.check_available(name, data_dir=data_dir, download=download)
    elif name == "tiny_imagenet":
        from frep_tf.data import tiny_imagenet

        tiny_imagenet.check_available(data_dir=data_dir)
    elif name == "fashion_mnist":
        from frep_tf.data import fashion_mnist

        fashion_mnist.check_available(data_dir)
    elif name.startswith("folder:"):
        path = pathlib.Path(name[len("folder:") :]).expanduser()
        if not path.is_dir():
            raise DatasetError(f"--dataset={name}: not a directory; expected PATH/<class>/<images>")
    elif name.startswith("npz:"):
        path = pathlib.Path(name[len("npz:") :]).expanduser()
        if not path.is_file():
            raise DatasetError(f"--dataset={name}: no such file; expected a .npz with x_train, y_train, x_test, y_test")


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    batch_size: int = 128,
    eval_batch_size: int | None = None,
    val_size: float = 0.1,
    seed: int = 0,
    augment: bool = True,
    image_size: int | tuple[int, int] | None = None,
    svhn_extra: bool = False,
    deterministic: bool = False,
    synthetic_shape: tuple[int, int, int] = (32, 32, 3),
    synthetic_classes: int = 10,
    synthetic_size: tuple[int, int] = (512, 128),
    download: bool = False,
    augmentation: str | None = None,
    train_samples: int = 0,
) -> Splits:
    """Loads `name` as batched train / val / test `tf.data` pipelines.

    Args:
      name: one of KNOWN_DATASETS, `folder:PATH` or `npz:PATH`.
      data_dir: tfds data directory (cifar10, cifar100, svhn); for tiny_imagenet also the base of
        the manual dir `<data_dir>/downloads/manual`. None: tfds's default (~/tensorflow_datasets).
      batch_size: training batch; the last partial batch of an epoch is dropped.
      eval_batch_size: batch of val and test (all examples kept); defaults to batch_size.
      val_size: fraction in (0, 1) or count of training examples held out for validation (fixed
        seed, independent of `seed`); 0 for none.
      seed: seeds the shuffle, the augmentation and synthetic data.
      augment: False turns training augmentation off.
      image_size: H (square) or (H, W) to resize every image to; required for folders of mixed sizes.
      svhn_extra: add SVHN's "extra" split to its training data.
      deterministic: make the element order reproducible too (see pipeline module docstring).
      synthetic_shape, synthetic_classes, synthetic_size: shape, classes and (train, test) sizes of
        `synthetic`.
      download: allow tfds to download cifar10 / cifar100 / svhn when they are not prepared.
      augmentation: override the dataset's default policy ("none", "crop", "crop_flip", "crop2");
        user data (folder:, npz:) gets none unless asked for here.
      train_samples: > 0 keeps a fixed random subset of that many training examples (the same for
        every seed) before the validation carve-out; 0 keeps all.

    Raises:
      DatasetError: any problem with the arguments or the data, as one line naming the flag or path.
    """
    batch_size, eval_batch_size, seed, size = _check_arguments(
        name, batch_size, eval_batch_size, seed, image_size, svhn_extra, augmentation
    )
    source = _load_source(
        name,
        data_dir=data_dir,
        seed=seed,
        image_size=size,
        svhn_extra=bool(svhn_extra),
        download=bool(download),
        synthetic_shape=synthetic_shape,
        synthetic_classes=synthetic_classes,
        synthetic_size=synthetic_size,
    )
    from frep_tf.data.pipeline import build_splits

    return build_splits(
        source,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        val_size=val_size,
        seed=seed,
        augment=bool(augment),
        augmentation=augmentation,
        image_size=size,
        deterministic=bool(deterministic),
        train_samples=_int(train_samples, "--train_samples"),
    )


def _check_arguments(name, batch_size, eval_batch_size, seed, image_size, svhn_extra, augmentation):
    """(batch_size, eval_batch_size, seed, image size or None), checked; DatasetError names the flag."""
    check_dataset_name(name)
    batch_size = _positive_int(batch_size, "--batch_size")
    eval_batch_size = batch_size if eval_batch_size is None else _positive_int(eval_batch_size, "--eval_batch_size")
    seed = _int(seed, "--seed")
    size = _image_size(image_size)
    if augmentation is not None:
        from frep_tf.data.augment import check_policy

        check_policy(augmentation)
    if svhn_extra and name != "svhn":
        raise DatasetError(f"--svhn_extra applies only to --dataset=svhn; received --dataset={name}")
    return batch_size, eval_batch_size, seed, size


def _load_source(
    name,
    *,
    data_dir,
    seed,
    image_size,
    svhn_extra,
    download,
    synthetic_shape,
    synthetic_classes,
    synthetic_size,
):
    if name == "digits":
        from frep_tf.data.offline import load_digits

        return load_digits()
    if name == "synthetic":
        from frep_tf.data.offline import load_synthetic

        shape = tuple(synthetic_shape) if isinstance(synthetic_shape, (tuple, list)) else ()
        if len(shape) != 3 or not all(_is_int(d) and d > 0 for d in shape):
            raise DatasetError(
                f"--synthetic_shape must be three positive integers (H, W, C); received: {synthetic_shape!r}"
            )
        if not _is_int(synthetic_classes) or synthetic_classes < 2:
            raise DatasetError(f"--synthetic_classes must be an integer >= 2; received: {synthetic_classes!r}")
        sizes = tuple(synthetic_size) if isinstance(synthetic_size, (tuple, list)) else ()
        if len(sizes) != 2 or not all(_is_int(d) and d > 0 for d in sizes):
            raise DatasetError(
                f"--synthetic_size must be two positive integers (train, test); received: {synthetic_size!r}"
            )
        return load_synthetic(
            shape=tuple(int(d) for d in shape),
            num_classes=int(synthetic_classes),
            sizes=(int(sizes[0]), int(sizes[1])),
            seed=seed,
        )
    if name in ("cifar10", "cifar100", "svhn"):
        from frep_tf.data.tfds_loaders import load_tfds

        return load_tfds(name, data_dir=data_dir, download=download, svhn_extra=svhn_extra)
    if name == "fashion_mnist":
        from frep_tf.data.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(data_dir)
    if name == "tiny_imagenet":
        from frep_tf.data.tiny_imagenet import load_tiny_imagenet

        return load_tiny_imagenet(data_dir=data_dir)
    if name.startswith("folder:"):
        from frep_tf.data.user import load_folder

        return load_folder(name[len("folder:") :], image_size=image_size)
    from frep_tf.data.user import load_npz

    return load_npz(name[len("npz:") :])


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int(value, flag: str) -> int:
    if not _is_int(value):
        raise DatasetError(f"{flag} must be an integer; received: {value!r}")
    return int(value)


def _positive_int(value, flag: str) -> int:
    if not _is_int(value) or value <= 0:
        raise DatasetError(f"{flag} must be a positive integer; received: {value!r}")
    return int(value)


def _image_size(value) -> tuple[int, int] | None:
    if value is None:
        return None
    if _is_int(value):
        value = (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    raise DatasetError(f"--image_size must be a positive integer or (height, width); received: {value!r}")
