"""Fashion-MNIST offline: the real IDX files (Debian's dataset-fashion-mnist, installed by .ci/run),
checksums of their decompressed contents, the search order, and one-line errors before TensorFlow."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from frep_tf import data
from frep_tf.data import fashion_mnist
from frep_tf.data.splits import dataset_arrays

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _real_dir() -> str:
    paths = fashion_mnist.idx_paths(fashion_mnist.DEBIAN_DIR)
    assert paths is not None, (
        f"the Fashion-MNIST IDX files are missing from {fashion_mnist.DEBIAN_DIR}: "
        "apt-get install dataset-fashion-mnist (.ci/run installs it)"
    )
    return fashion_mnist.DEBIAN_DIR


def test_the_real_files_load_with_their_checksums_shapes_and_class_counts():
    arrays = fashion_mnist.read_idx_dir(_real_dir())
    assert arrays["x_train"].shape == (60000, 28, 28) and arrays["x_test"].shape == (10000, 28, 28)
    assert arrays["x_train"].dtype == np.uint8 and arrays["x_train"].max() == 255 and arrays["x_train"].min() == 0
    assert np.bincount(arrays["y_train"], minlength=10).tolist() == [6000] * 10
    assert np.bincount(arrays["y_test"], minlength=10).tolist() == [1000] * 10
    # The checksums are of the decompressed contents (Debian's gzip headers differ from upstream's).
    for key, spec in fashion_mnist.FILES.items():
        path = fashion_mnist.idx_paths(_real_dir())[key]
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as f:
            assert hashlib.md5(f.read()).hexdigest() == spec.md5


def test_load_dataset_gives_28x28x1_in_unit_range_with_crop_from_2_pixel_padding():
    splits = data.load_dataset("fashion_mnist", batch_size=128, val_size=1000, train_samples=5000)
    info = splits.info
    assert (info.image_shape, info.num_classes, info.num_test) == ((28, 28, 1), 10, 10000)
    assert (info.num_train, info.num_val) == (4000, 1000)
    assert info.augmentation == "random 28x28 crop from 2-pixel zero padding"
    x, y = next(iter(splits.train))
    assert x.shape == (128, 28, 28, 1) and x.dtype.name == "float32"
    assert 0.0 <= float(np.min(x)) and float(np.max(x)) <= 1.0
    x_test, y_test = dataset_arrays(splits.test)
    expected = fashion_mnist.read_idx_dir(_real_dir())
    np.testing.assert_allclose(x_test[..., 0], expected["x_test"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y_test, expected["y_test"])


def test_train_samples_is_a_fixed_subset_the_same_for_every_seed():
    a = data.load_dataset("fashion_mnist", batch_size=64, val_size=0, train_samples=640, seed=0, augment=False)
    b = data.load_dataset("fashion_mnist", batch_size=64, val_size=0, train_samples=640, seed=1, augment=False)

    def labels(splits):
        return sorted(np.concatenate([y for _, y in splits.train.take(10).as_numpy_iterator()]).tolist())

    assert labels(a) == labels(b)
    with pytest.raises(data.DatasetError, match=r"--train_samples=70000: must lie in \[1, 60000\]"):
        data.load_dataset("fashion_mnist", batch_size=64, train_samples=70000)


def _copy_plain(tmp_path) -> str:
    """The four files, decompressed, in a directory of our own (as a user's --data_dir)."""
    target = tmp_path / "fm"
    target.mkdir()
    for path in fashion_mnist.idx_paths(_real_dir()).values():
        name = os.path.basename(path).removesuffix(".gz")
        with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as src, open(target / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return str(target)


def test_data_dir_with_plain_idx_files_comes_first(tmp_path, monkeypatch):
    directory = _copy_plain(tmp_path)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "not-installed"))
    assert fashion_mnist.locate(directory) == ("idx", directory)
    data.check_available("fashion_mnist", data_dir=directory)


def test_a_corrupt_file_is_one_line_naming_file_and_checksum(tmp_path, monkeypatch):
    directory = _copy_plain(tmp_path)
    labels = os.path.join(directory, "t10k-labels-idx1-ubyte")
    raw = bytearray(open(labels, "rb").read())
    raw[100] = (raw[100] + 1) % 10
    open(labels, "wb").write(bytes(raw))
    with pytest.raises(data.DatasetError) as info:
        data.check_available("fashion_mnist", data_dir=directory)
    message = str(info.value)
    assert "\n" not in message and labels in message and fashion_mnist.FILES["y_test"].md5 in message


def test_missing_data_stops_in_seconds_with_one_line_and_exit_2(tmp_path):
    # main.py with the Debian location pointed elsewhere, and an empty --data_dir: nothing anywhere.
    code = (
        "import runpy, sys; import frep_tf.data.fashion_mnist as f; "
        f"f.DEBIAN_DIR = {str(tmp_path / 'not-installed')!r}; "
        "sys.argv = ['main.py'] + sys.argv[1:]; runpy.run_path('main.py', run_name='__main__')"
    )
    workdir = tmp_path / "work"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, "--dataset=fashion_mnist", f"--data_dir={tmp_path}", f"--workdir={workdir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "apt-get install dataset-fashion-mnist" in errors[0] and "--data_dir" in errors[0]
    assert elapsed < 5.0, f"took {elapsed:.1f} s"
    assert not workdir.exists()
    assert "tensorflow" not in proc.stderr.lower()
