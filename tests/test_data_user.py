"""User data: folder:PATH (one sub-folder per class) and npz:PATH, and their error messages."""

import numpy as np
import pytest
from PIL import Image

from frep_tf import data


def write_image(path, array, format=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=format)


# ---------------------------------------------------------------- folder:


def test_folder_with_class_subfolders_loads_every_format_exactly(tmp_path):
    rng = np.random.default_rng(0)
    expected = {}
    for label, name in enumerate(["cat", "dog", "eel"]):
        for i, (suffix, options) in enumerate(
            [(".png", {}), (".bmp", {}), (".PNG", {}), (".tiff", {}), (".webp", {"lossless": True})]
        ):
            array = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            (tmp_path / name).mkdir(exist_ok=True)
            Image.fromarray(array).save(tmp_path / name / f"{i}{suffix}", **options)
            expected[array.tobytes()] = label
    (tmp_path / "dog" / "notes.txt").write_text("not an image; ignored")
    (tmp_path / ".hidden").mkdir()

    splits = data.load_dataset(f"folder:{tmp_path}", batch_size=4, val_size=0)
    info = splits.info
    assert (info.image_shape, info.num_classes) == ((10, 12, 3), 3)
    assert (info.num_train, info.num_val, info.num_test) == (12, 0, 3), "one test image per class"
    assert info.augmentation == "none"

    x_test, y_test = data.dataset_arrays(splits.test)
    assert sorted(y_test) == [0, 1, 2]
    x_train, y_train = (np.concatenate(parts) for parts in zip(*splits.train.as_numpy_iterator(), strict=True))
    assert x_train.shape == (12, 10, 12, 3) and x_train.dtype == np.float32
    seen = {}
    for image, label in zip(np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test]), strict=True):
        pixels = np.round(image * 255)
        np.testing.assert_allclose(image * 255, pixels, atol=1e-3)
        seen[pixels.astype(np.uint8).tobytes()] = int(label)
    assert seen == expected, "every image once, pixel-exact, with its folder's label"


def test_folder_with_train_and_test_subfolders(tmp_path):
    rng = np.random.default_rng(2)
    for split, count in (("train", 6), ("test", 2)):
        for name in ("x", "y"):
            for i in range(count):
                write_image(tmp_path / split / name / f"{i}.jpg", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    splits = data.load_dataset(f"folder:{tmp_path}", batch_size=4, val_size=2)
    assert (splits.info.num_train, splits.info.num_val, splits.info.num_test) == (10, 2, 4)
    assert sorted(data.dataset_arrays(splits.test)[1]) == [0, 0, 1, 1]


def test_folder_mixed_sizes_need_image_size(tmp_path):
    rng = np.random.default_rng(3)
    for name in ("p", "q"):
        for i, size in enumerate([(8, 8), (12, 9), (8, 8)]):
            write_image(tmp_path / name / f"{i}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    with pytest.raises(data.DatasetError) as error:
        data.load_dataset(f"folder:{tmp_path}")
    message = str(error.value)
    assert "\n" not in message and "--image_size" in message and "different sizes" in message
    assert "8x8" in message and "9x12" in message

    splits = data.load_dataset(f"folder:{tmp_path}", image_size=(5, 7), batch_size=2, val_size=0)
    assert splits.info.image_shape == (5, 7, 3)
    assert next(iter(splits.train))[0].shape == (2, 5, 7, 3)


def test_folder_of_greyscale_images_has_one_channel(tmp_path):
    rng = np.random.default_rng(4)
    for name in ("zero", "one"):
        for i in range(3):
            write_image(tmp_path / name / f"{i}.png", rng.integers(0, 256, (7, 7), dtype=np.uint8))
    splits = data.load_dataset(f"folder:{tmp_path}", batch_size=2, val_size=0)
    assert splits.info.image_shape == (7, 7, 1)


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("missing", "not a directory"),
        ("files_only", "no class sub-folders"),
        ("empty_class", "holds no images"),
        ("one_class", "need at least 2"),
        ("corrupt", "is not a readable image"),
    ],
)
def test_bad_folders_raise_clear_errors(tmp_path, layout, expected):
    root = tmp_path / "images"
    pixels = np.zeros((4, 4, 3), np.uint8)
    if layout == "files_only":
        write_image(root / "a.png", pixels)
    if layout in ("empty_class", "corrupt", "one_class"):
        for i in range(3):
            write_image(root / "good" / f"{i}.png", pixels)
    if layout == "empty_class":
        (root / "empty").mkdir()
    if layout == "corrupt":
        write_image(root / "bad" / "0.png", pixels)
        (root / "bad" / "1.png").write_bytes(b"not a png")
    with pytest.raises(data.DatasetError, match=expected) as error:
        data.load_dataset(f"folder:{root}")
    assert str(error.value).startswith(f"--dataset=folder:{root}: ") and "\n" not in str(error.value)


# ---------------------------------------------------------------- npz:


def good_arrays(rng, n_train=20, n_test=6):
    return {
        "x_train": rng.integers(0, 256, (n_train, 5, 5, 3), dtype=np.uint8),
        "y_train": np.arange(n_train) % 4,
        "x_test": rng.integers(0, 256, (n_test, 5, 5, 3), dtype=np.uint8),
        "y_test": np.arange(n_test) % 4,
    }


def test_npz_loads_and_scales_uint8(tmp_path):
    arrays = good_arrays(np.random.default_rng(5))
    np.savez(tmp_path / "d.npz", **arrays)
    splits = data.load_dataset(f"npz:{tmp_path / 'd.npz'}", batch_size=4, val_size=4)
    info = splits.info
    assert (info.image_shape, info.num_classes, info.num_train, info.num_val, info.num_test) == ((5, 5, 3), 4, 16, 4, 6)
    x_test, y_test = data.dataset_arrays(splits.test)
    np.testing.assert_allclose(x_test, arrays["x_test"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y_test, arrays["y_test"])


def test_npz_float_images_without_channel_axis_train_with_keras(tmp_path):
    import keras

    rng = np.random.default_rng(6)
    x = rng.random((60, 6, 6), dtype=np.float32)
    y = (x.mean(axis=(1, 2)) > 0.5).astype(np.int64)
    np.savez(tmp_path / "f.npz", x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])
    splits = data.load_dataset(f"npz:{tmp_path / 'f.npz'}", batch_size=8, augmentation="crop_flip")
    assert splits.info.image_shape == (6, 6, 1) and splits.info.num_classes == 2
    assert "crop" in splits.info.augmentation
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(splits.train, validation_data=splits.val, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0]) and np.isfinite(history.history["val_loss"][0])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"x_test": None}, "missing array\\(s\\) x_test"),
        ({"y_test": np.array([0, 1, 2, 3, 4, 1])}, "y_test: label 4 is out of range; labels must lie in \\[0, 3\\]"),
        ({"y_train": np.arange(20) % 4 - 1}, "y_train: labels must be >= 0; found -1"),
        ({"x_train": np.full((20, 5, 5, 3), np.nan, np.float32)}, "x_train: 1500 pixel values are NaN"),
        ({"x_train": np.zeros((20, 25), np.uint8)}, "x_train: images must have shape \\(N, H, W, C\\)"),
        ({"x_train": np.full((20, 5, 5, 3), 255.0, np.float32)}, "float pixel values must lie in \\[0, 1\\]"),
        ({"y_train": np.arange(19) % 4}, "19 labels for 20 images"),
        ({"y_train": np.linspace(0, 3, 20)}, "whole class indices"),
        ({"x_test": np.zeros((6, 4, 4, 3), np.uint8)}, "same \\(H, W, C\\)"),
    ],
)
def test_bad_npz_raises_clear_errors(tmp_path, change, expected):
    arrays = good_arrays(np.random.default_rng(7))
    arrays.update(change)
    np.savez(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(data.DatasetError, match=expected) as error:
        data.load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    assert str(error.value).startswith(f"--dataset=npz:{tmp_path / 'bad.npz'}") and "\n" not in str(error.value)


def test_npz_that_is_not_an_npz(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"garbage")
    with pytest.raises(data.DatasetError, match="not a readable numpy .npz"):
        data.load_dataset(f"npz:{tmp_path / 'x.npz'}")
    with pytest.raises(data.DatasetError, match="no such file"):
        data.load_dataset(f"npz:{tmp_path / 'missing.npz'}")
