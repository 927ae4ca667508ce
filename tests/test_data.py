"""frep_tf.data: the load_dataset contract, digits, synthetic, augmentation, tfds datasets, offline."""

import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from frep_tf import data
from frep_tf.data import augment, tfds_loaders


def batches(ds):
    """All batches of `ds` as a list of (x, y) numpy pairs."""
    return [(x, y) for x, y in ds.as_numpy_iterator()]


def crop_flip_matches(augmented, original, *, pad=4):
    """All (dy, dx, flipped) for which `augmented` is exactly that crop of zero-padded `original`."""
    height, width = original.shape[:2]
    padded = np.pad(original, [(pad, pad), (pad, pad), (0, 0)])
    matches = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy : dy + height, dx : dx + width]
            if np.array_equal(augmented, crop):
                matches.append((dy, dx, False))
            if np.array_equal(augmented, crop[:, ::-1]):
                matches.append((dy, dx, True))
    return matches


# ---------------------------------------------------------------- package and arguments


def test_import_and_offline_check_stay_light_and_fast(tmp_path):
    """A fresh process: importing frep_tf.data loads no heavy library, and check_available reports
    missing cifar10 data without importing TensorFlow, well within the 10 s budget."""
    code = f"""
import sys, time
start = time.perf_counter()
import frep_tf.data as data
print(sorted(m for m in ("tensorflow", "tensorflow_datasets", "sklearn", "keras") if m in sys.modules))
try:
    data.check_available("cifar10", data_dir={str(tmp_path)!r})
except data.DatasetError as error:
    print(round(time.perf_counter() - start, 2), "tensorflow" in sys.modules, error)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported, result = out.stdout.strip().splitlines()
    assert imported == "[]"
    seconds, tensorflow_loaded, message = result.split(" ", 2)
    assert float(seconds) < 10.0 and tensorflow_loaded == "False"
    assert message.startswith("--dataset=cifar10: no prepared tfds data") and f"--data_dir={tmp_path}" in message


def test_check_available_finds_missing_data_of_every_kind(tmp_path):
    for name, expected in [
        ("svhn", "no prepared tfds data svhn_cropped/3.1.0"),
        ("tiny_imagenet", "tiny-imagenet-200.zip not found"),
        (f"folder:{tmp_path / 'none'}", "not a directory"),
        (f"npz:{tmp_path / 'none.npz'}", "no such file"),
        ("imagenet", "unknown dataset"),
    ]:
        with pytest.raises(data.DatasetError, match=expected):
            data.check_available(name, data_dir=str(tmp_path))
    for name in ("digits", "synthetic", f"folder:{tmp_path}"):
        data.check_available(name, data_dir=str(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"name": "mnist"}, "--dataset=mnist"),
        ({"name": "folder:"}, "--dataset=folder:"),
        ({"name": "digits", "batch_size": 0}, "--batch_size"),
        ({"name": "digits", "eval_batch_size": -1}, "--eval_batch_size"),
        ({"name": "digits", "val_size": 1.0}, "--val_size"),
        ({"name": "digits", "val_size": -3}, "--val_size"),
        ({"name": "digits", "val_size": 1437}, "--val_size"),
        ({"name": "digits", "val_size": "0.1"}, "--val_size"),
        ({"name": "digits", "image_size": (8, 0)}, "--image_size"),
        ({"name": "digits", "augmentation": "rotate"}, "augmentation"),
        ({"name": "digits", "batch_size": 2000}, "--batch_size=2000"),
        ({"name": "cifar10", "svhn_extra": True}, "--svhn_extra"),
        ({"name": "synthetic", "synthetic_shape": (32, 32)}, "--synthetic_shape"),
        ({"name": "synthetic", "synthetic_classes": 1}, "--synthetic_classes"),
        ({"name": "synthetic", "synthetic_size": (0, 10)}, "--synthetic_size"),
    ],
)
def test_bad_arguments_raise_one_line_naming_the_flag(kwargs, flag):
    name = kwargs.pop("name")
    with pytest.raises(data.DatasetError) as error:
        data.load_dataset(name, **kwargs)
    message = str(error.value)
    assert flag in message
    assert "\n" not in message


def test_known_datasets_and_name_check():
    assert data.KNOWN_DATASETS == (
        "digits",
        "synthetic",
        "fashion_mnist",
        "cifar10",
        "cifar100",
        "svhn",
        "tiny_imagenet",
    )
    for name in (*data.KNOWN_DATASETS, "folder:/x", "npz:/x.npz"):
        data.check_dataset_name(name)
    with pytest.raises(data.DatasetError, match="allowed: digits, synthetic"):
        data.check_dataset_name("cifar")


# ---------------------------------------------------------------- digits and synthetic


def test_digits_test_split_is_the_fixed_protocol_and_val_comes_from_train():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    ref_train, ref_test, ref_y_train, ref_y_test = train_test_split(
        digits.images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    # 1293 = 3 * 431 training examples: no partial batch is dropped.
    splits = data.load_dataset("digits", batch_size=431, eval_batch_size=100, val_size=0.1)
    info = splits.info
    assert (info.name, info.image_shape, info.num_classes) == ("digits", (8, 8, 1), 10)
    assert (info.num_train, info.num_val, info.num_test) == (1293, 144, 360)
    assert info.augmentation == "none"

    x_test, y_test = data.dataset_arrays(splits.test)
    assert x_test.dtype == np.float32 and y_test.dtype == np.int32
    np.testing.assert_array_equal(x_test[..., 0], (ref_test / 16.0).astype(np.float32))
    np.testing.assert_array_equal(y_test, ref_y_test)

    # Validation and training images together are exactly the reference training part.
    train = np.concatenate([x for x, _ in batches(splits.train)])
    val = np.concatenate([x for x, _ in batches(splits.val)])
    assert val.shape == (144, 8, 8, 1)

    def keys(images):
        return sorted(image.tobytes() for image in images)

    assert keys(np.concatenate([train, val])) == keys((ref_train / 16.0).astype(np.float32)[..., None])


def test_batches_dtypes_and_drop_remainder():
    splits = data.load_dataset("digits", batch_size=100, eval_batch_size=50, val_size=100)
    train = batches(splits.train)
    assert len(train) == splits.info.num_train // 100 == int(splits.train.cardinality())
    for x, y in train:
        assert x.shape == (100, 8, 8, 1) and x.dtype == np.float32
        assert y.shape == (100,) and y.dtype == np.int32
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert 0 <= y.min() and y.max() < 10
    assert sum(len(y) for _, y in batches(splits.val)) == 100
    assert [len(y) for _, y in batches(splits.test)] == [50] * 7 + [10]


def test_val_size_zero_gives_no_validation_split():
    splits = data.load_dataset("digits", val_size=0)
    assert splits.val is None
    assert splits.info.num_val == 0 and splits.info.num_train == 1437


def test_image_size_resizes_every_split():
    splits = data.load_dataset("digits", batch_size=32, image_size=16)
    assert splits.info.image_shape == (16, 16, 1)
    for ds in (splits.train, splits.val, splits.test):
        x, _ = next(iter(ds))
        assert x.shape[1:] == (16, 16, 1)
        assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0


def test_synthetic_shapes_seed_and_reproducibility():
    kwargs = dict(
        batch_size=16,
        synthetic_shape=(12, 10, 3),
        synthetic_classes=5,
        synthetic_size=(80, 24),
        augmentation="crop_flip",
        deterministic=True,
    )
    first = data.load_dataset("synthetic", seed=3, **kwargs)
    info = first.info
    assert info.image_shape == (12, 10, 3) and info.num_classes == 5
    assert (info.num_train, info.num_val, info.num_test) == (72, 8, 24)
    assert info.augmentation == "random 12x10 crop from 4-pixel zero padding + random horizontal flip"
    epoch1, epoch2 = batches(first.train), batches(first.train)
    again = batches(data.load_dataset("synthetic", seed=3, **kwargs).train)
    other_seed = batches(data.load_dataset("synthetic", seed=4, **kwargs).train)
    assert len(epoch1) == 4
    for (x1, y1), (x2, y2) in zip(epoch1, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(epoch1[0][0], epoch2[0][0]), "every epoch reshuffles and re-augments"
    assert not np.array_equal(epoch1[0][0], other_seed[0][0])
    assert all(0 <= y.min() and y.max() < 5 for _, y in epoch1)
    # Test data is never shuffled: two passes agree.
    np.testing.assert_array_equal(data.dataset_arrays(first.test)[0], data.dataset_arrays(first.test)[0])


def test_fit_runs_on_the_pipeline():
    import keras

    splits = data.load_dataset("digits", batch_size=64)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile(
        keras.optimizers.Adam(0.05),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(splits.train, validation_data=splits.val, epochs=3, verbose=0, shuffle=False)
    assert history.history["accuracy"][-1] > history.history["accuracy"][0]
    assert model.evaluate(splits.test, verbose=0, return_dict=True)["accuracy"] > 0.8


# ---------------------------------------------------------------- augmentation ops


def test_crop_and_flip_ops_match_the_numpy_reference():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (64, 8, 6, 3)).astype(np.uint8)  # no zeros: padding is visible
    seed = tf.constant([7, 11], tf.int64)

    cropped = augment.augment_batch(tf.constant(images), seed, "crop").numpy()
    flipped = augment.augment_batch(tf.constant(images), seed, "crop_flip").numpy()
    assert cropped.shape == flipped.shape == images.shape and cropped.dtype == np.uint8
    crop_offsets, flips = set(), []
    for index in range(len(images)):
        crop_only = crop_flip_matches(cropped[index], images[index])
        assert crop_only and not any(f for _, _, f in crop_only), "crop never flips"
        crop_offsets.add(crop_only[0][:2])
        both = crop_flip_matches(flipped[index], images[index])
        assert len(both) == 1, "a crop and flip of the padded image"
        flips.append(both[0][2])
    assert len(crop_offsets) > 20, "offsets spread over the 9x9 range"
    assert 10 < sum(flips) < 54, "about half of the images are flipped"
    np.testing.assert_array_equal(augment.augment_batch(tf.constant(images), seed, "none"), images)
    again = augment.augment_batch(tf.constant(images), seed, "crop_flip").numpy()
    np.testing.assert_array_equal(again, flipped)


def test_describe_policies():
    assert augment.describe("none", (32, 32, 3)) == "none"
    assert augment.describe("crop", (32, 32, 3)) == "random 32x32 crop from 4-pixel zero padding"
    with pytest.raises(data.DatasetError, match="allowed: none, crop, crop_flip"):
        augment.describe("mixup", (32, 32, 3))


# ---------------------------------------------------------------- tfds datasets (mocked records)

NUM_MOCK = 40


@pytest.fixture(scope="module")
def tfds_metadata(tmp_path_factory):
    """tfds metadata (dataset_info.json, features.json) of the real builders: 'prepared' datasets.

    tfds.testing.mock_data then serves random records through the real builders' as_dataset.
    """
    root = tmp_path_factory.mktemp("tfds_metadata")
    for name in ("cifar10", "cifar100", "svhn_cropped"):
        builder = tfds.builder(name, data_dir=root)
        builder.data_path.mkdir(parents=True)
        builder.info.write_to_directory(builder.data_path)
    return root


@pytest.mark.parametrize(
    ("name", "num_classes", "flips"),
    [("cifar10", 10, True), ("cifar100", 100, True), ("svhn", 10, False)],
)
def test_tfds_datasets_through_mocked_tfds(tmp_path, tfds_metadata, name, num_classes, flips):
    kwargs = dict(data_dir=str(tmp_path), batch_size=10, val_size=0.25, seed=1, deterministic=True)
    with tfds.testing.mock_data(num_examples=NUM_MOCK, data_dir=str(tfds_metadata)):
        splits = data.load_dataset(name, **kwargs)
        plain = data.load_dataset(name, augment=False, **kwargs)
        info = splits.info
        assert (info.name, info.image_shape, info.num_classes) == (name, (32, 32, 3), num_classes)
        assert (info.num_train, info.num_val, info.num_test) == (30, 10, NUM_MOCK)
        assert ("horizontal flip" in info.augmentation) == flips
        assert info.augmentation.startswith("random 32x32 crop from 4-pixel zero padding")
        assert plain.info.augmentation.startswith("none")

        train, plain_train = batches(splits.train), batches(plain.train)
        val, test = batches(splits.val), batches(splits.test)

    assert len(train) == 3
    for x, y in train + val + test:
        assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape[1:] == (32, 32, 3)
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert 0 <= y.min() and y.max() < num_classes
    assert sum(len(y) for _, y in val) == 10 and sum(len(y) for _, y in test) == NUM_MOCK
    assert plain_train[0][0].max() > 0.9, "uint8 pixels scaled by 1/255 use the whole [0, 1] range"

    # Validation examples are carved out of the training split: disjoint from training.
    train_keys = {image.tobytes() for x, _ in plain_train for image in x}
    val_keys = {image.tobytes() for x, _ in val for image in x}
    assert len(train_keys) == 30 and len(val_keys) == 10 and not train_keys & val_keys

    # Same seed: same order; augmentation changes pixels but never shape or labels.
    flipped = 0
    for (x, y), (x_plain, y_plain) in zip(train, plain_train, strict=True):
        np.testing.assert_array_equal(y, y_plain)
        assert x.shape == x_plain.shape and not np.array_equal(x, x_plain)
        for image, image_plain in zip(x, x_plain, strict=True):
            matches = crop_flip_matches(image, image_plain)
            assert matches, "every augmented image is a crop (and maybe flip) of the original"
            if flips:
                flipped += matches[0][2]
            else:
                assert not any(f for _, _, f in matches), "SVHN is never flipped"
    assert (flipped > 0) == flips


def test_svhn_extra_joins_the_training_split(tmp_path, tfds_metadata):
    with tfds.testing.mock_data(num_examples=NUM_MOCK, data_dir=str(tfds_metadata)):
        splits = data.load_dataset("svhn", data_dir=str(tmp_path), batch_size=8, svhn_extra=True)
        assert (splits.info.num_train, splits.info.num_val) == (72, 8)
        assert sum(1 for _ in splits.train) == 9


def test_offline_cifar10_fails_in_seconds_with_instructions(tmp_path):
    empty = tmp_path / "tfds"
    empty.mkdir()
    start = time.perf_counter()
    with pytest.raises(data.DatasetError) as error:
        data.load_dataset("cifar10", data_dir=str(empty))
    seconds = time.perf_counter() - start
    message = str(error.value)
    assert seconds < 10.0
    assert "\n" not in message
    assert f"--data_dir={empty}" in message
    assert "tfds build cifar10 --data_dir=DIR" in message
    assert "download_and_prepare()" in message


def test_allowed_download_with_unreachable_host_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_loaders, "host_reachable", lambda host, port: False)

    def no_download(*args, **kwargs):
        raise AssertionError("download_and_prepare must not run when the host is unreachable")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    with pytest.raises(data.DatasetError, match="ufldl.stanford.edu:80 cannot be reached") as error:
        data.load_dataset("svhn", data_dir=str(tmp_path), download=True)
    assert "tfds build svhn_cropped" in str(error.value)
