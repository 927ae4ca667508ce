"""CIFAR-10, CIFAR-100 and SVHN (cropped digits) through TensorFlow Datasets.

Offline first: whether the prepared data exists is checked on disk before anything could touch the
network, so a machine without internet gets a one-line DatasetError in seconds that says how to
prepare the data elsewhere and copy it over, instead of minutes of download retries.
"""

from __future__ import annotations

import dataclasses
import os
import socket

from frep_tf.data.errors import DatasetError
from frep_tf.data.source import StreamSource

NETWORK_PROBE_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    tfds_name: str
    augmentation: str
    download_host: str  # where tfds downloads the raw files from; probed before a download
    download_port: int  # 443 for https, 80 for http URLs in the tfds builder


TFDS_DATASETS = {
    "cifar10": TfdsSpec("cifar10", "crop_flip", "www.cs.toronto.edu", 443),
    "cifar100": TfdsSpec("cifar100", "crop_flip", "www.cs.toronto.edu", 443),
    "svhn": TfdsSpec("svhn_cropped", "crop", "ufldl.stanford.edu", 80),
}


def load_tfds(name: str, *, data_dir: str | None, download: bool, svhn_extra: bool = False) -> StreamSource:
    """Reads `name` (a key of TFDS_DATASETS) from prepared tfds data under `data_dir`.

    Test data is tfds's "test" split. With `svhn_extra`, SVHN's 531,131 "extra" images are
    appended to its training split.
    """
    import tensorflow_datasets as tfds

    spec = TFDS_DATASETS[name]
    builder = ensure_prepared(name, data_dir=data_dir, download=download)

    # Keep file order fixed (the validation split is carved by position) and leave caching to the
    # pipeline, which caches after the carve-out.
    read_config = tfds.ReadConfig(try_autocache=False)

    def split(split_name: str):
        ds = builder.as_dataset(
            split=split_name,
            as_supervised=True,
            shuffle_files=False,
            read_config=read_config,
        )
        count = int(ds.cardinality())
        if count < 0:  # unknown cardinality: trust the metadata written when the data was prepared
            count = builder.info.splits[split_name].num_examples
        return ds, count

    train, num_train = split("train")
    if svhn_extra:
        extra, num_extra = split("extra")
        train, num_train = train.concatenate(extra), num_train + num_extra
    test, num_test = split("test")
    return StreamSource(
        name=name,
        train=train,
        test=test,
        num_train=num_train,
        num_test=num_test,
        image_shape=tuple(int(d) for d in builder.info.features["image"].shape),
        num_classes=int(builder.info.features["label"].num_classes),
        augmentation=spec.augmentation,
    )


def check_available(name: str, *, data_dir: str | None, download: bool):
    """Raises DatasetError unless `name`'s tfds data is prepared, or may be downloaded and its host answers.

    Imports tensorflow_datasets but not TensorFlow (about a second), so a CLI can call it first.
    Returns the tfds builder.
    """
    import tensorflow_datasets as tfds

    spec = TFDS_DATASETS[name]
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if is_prepared(builder):
        return builder
    if not download:
        raise DatasetError(not_prepared_message(builder, name))
    if not host_reachable(spec.download_host, spec.download_port):
        raise DatasetError(
            f"--dataset={name}: downloading was allowed but {spec.download_host}:{spec.download_port} cannot be "
            f"reached (TCP probe, {NETWORK_PROBE_SECONDS:g} s timeout); " + _how_to_prepare(builder)
        )
    return builder


def ensure_prepared(name: str, *, data_dir: str | None, download: bool):
    """The tfds builder of `name` with its data on disk; downloads it only when allowed and reachable."""
    builder = check_available(name, data_dir=data_dir, download=download)
    if is_prepared(builder):
        return builder
    import tensorflow_datasets as tfds

    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig())
    except Exception as error:  # any failure of the download becomes one clear line
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        raise DatasetError(
            f"--dataset={name}: preparing tfds {builder.name} in {builder.data_dir_root} failed "
            f"({type(error).__name__}: {first_line}); " + _how_to_prepare(builder)
        ) from error
    return builder


def is_prepared(builder) -> bool:
    """Whether `builder`'s data is on disk (without tfds's warning for a missing folder)."""
    return (builder.data_path / "dataset_info.json").exists() and builder.is_prepared()


def not_prepared_message(builder, dataset: str) -> str:
    root = os.fspath(builder.data_dir_root)
    where = f"--data_dir={root}" + ("" if os.path.isdir(root) else " (directory does not exist)")
    return (
        f"--dataset={dataset}: no prepared tfds data {builder.name}/{builder.version} in {where} "
        f"and downloading is off; " + _how_to_prepare(builder)
    )


def _how_to_prepare(builder) -> str:
    name = builder.name
    root = os.fspath(builder.data_dir_root)
    return (
        f"on a machine with internet run `tfds build {name} --data_dir=DIR` (or `python -c "
        f"\"import tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='DIR')"
        f'.download_and_prepare()"`), copy DIR/{name} to {root}/{name} here and pass --data_dir={root}'
    )


def host_reachable(host: str, port: int, timeout: float = NETWORK_PROBE_SECONDS) -> bool:
    """True when a TCP connection to host:port opens within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
