"""The user's own data: `folder:PATH` (one sub-folder of images per class) and `npz:PATH` (arrays).

folder:PATH accepts two layouts:
    PATH/<class>/<image>                   a test split is carved out (20 % per class, fixed seed)
    PATH/train/<class>/<image> and PATH/test/<class>/<image>
Classes are the sub-folder names in sorted order. Any format Pillow reads (PNG, JPEG, BMP, GIF,
WebP, TIFF, PPM, ...) is accepted; images are stored greyscale if every one of them is, else RGB,
and resized to `image_size` when one is given (required when the sizes differ). The whole folder
is decoded into memory once.

npz:PATH is a numpy .npz file with arrays x_train, y_train, x_test, y_test: images (N, H, W, C)
or (N, H, W) as uint8 in [0, 255] or float in [0, 1]; labels integer class indices from 0.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import zipfile

import numpy as np

from frep_tf.data.errors import DatasetError
from frep_tf.data.source import ArraySource, check_images, check_labels

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
FOLDER_TEST_FRACTION = 0.2
FOLDER_SPLIT_SEED = 0
IMAGE_EXTENSIONS = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".bmp",
        ".gif",
        ".webp",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
    }
)
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def load_folder(path: str, *, image_size: tuple[int, int] | None) -> ArraySource:
    """Reads `folder:PATH`; see the module docstring for the layouts."""
    flag = f"--dataset=folder:{path}"
    root = pathlib.Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{flag}: not a directory; expected PATH/<class>/<images>")
    top = _subfolders(root)
    if {"train", "test"} <= set(top):
        classes = _subfolders(root / "train")
        train_files, train_labels = _class_files(root / "train", classes, flag)
        unknown = sorted(set(_subfolders(root / "test")) - set(classes))
        if unknown:
            raise DatasetError(f"{flag}: test classes {unknown} have no folder in {root / 'train'}")
        test_files, test_labels = _class_files(root / "test", classes, flag, allow_missing=True)
        if not test_files:
            raise DatasetError(f"{flag}: no images in {root / 'test'}/<class>/")
    else:
        classes = top
        files, labels = _class_files(root, classes, flag)
        is_test = _stratified_test_mask(labels, len(classes))
        train_files = [f for f, t in zip(files, is_test, strict=True) if not t]
        train_labels = labels[~is_test]
        test_files = [f for f, t in zip(files, is_test, strict=True) if t]
        test_labels = labels[is_test]
    if len(classes) < 2:
        raise DatasetError(f"{flag}: found {len(classes)} class sub-folder(s) {classes}; need at least 2")

    x_train, x_test = _decode_all(train_files, test_files, image_size=image_size, flag=flag)
    return ArraySource(
        name=f"folder:{path}",
        x_train=x_train,
        y_train=train_labels,
        x_test=x_test,
        y_test=test_labels,
        num_classes=len(classes),
        augmentation="none",
    )


def _subfolders(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_files(folder, classes, flag, allow_missing=False) -> tuple[list[pathlib.Path], np.ndarray]:
    if not classes:
        raise DatasetError(
            f"{flag}: no class sub-folders in {folder}; expected {folder}/<class>/<images> "
            "(or train/<class>/ and test/<class>/)"
        )
    files, labels = [], []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if allow_missing and not class_dir.is_dir():
            continue
        images = sorted(
            p
            for p in class_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not images:
            raise DatasetError(
                f"{flag}: class folder {class_dir} holds no images (extensions {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        files.extend(images)
        labels.extend([label] * len(images))
    return files, np.asarray(labels, dtype=np.int32)


def _stratified_test_mask(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """FOLDER_TEST_FRACTION of each class (rounded, fixed seed) for testing, the rest for training."""
    rng = np.random.default_rng(FOLDER_SPLIT_SEED)
    mask = np.zeros(labels.shape[0], dtype=bool)
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        count = round(FOLDER_TEST_FRACTION * members.size)
        mask[rng.permutation(members)[:count]] = True
    return mask


def _decode_all(train_files, test_files, *, image_size, flag) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    files = list(train_files) + list(test_files)
    if not test_files:
        raise DatasetError(f"{flag}: too few images to carve out a test split; put at least 3 images per class")

    def header(path):
        try:
            with Image.open(path) as image:
                return image.size, image.mode
        except OSError as error:
            raise DatasetError(f"{flag}: {path} is not a readable image ({error})") from error

    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        headers = list(pool.map(header, files))
        sizes = {}
        for path, (size, _) in zip(files, headers, strict=True):
            sizes.setdefault(size, path)
        if image_size is None and len(sizes) > 1:
            (size_a, file_a), (size_b, file_b) = list(sizes.items())[:2]
            raise DatasetError(
                f"{flag}: images have {len(sizes)} different sizes (e.g. {file_a} is "
                f"{size_a[0]}x{size_a[1]}, {file_b} is {size_b[0]}x{size_b[1]}); pass --image_size to resize all"
            )
        grey = all(mode in _GREY_MODES for _, mode in headers)
        mode = "L" if grey else "RGB"
        target = None if image_size is None else (int(image_size[1]), int(image_size[0]))  # PIL: (W, H)

        def decode(path):
            try:
                with Image.open(path) as image:
                    image = image.convert(mode)
                    if target is not None and image.size != target:
                        image = image.resize(target, Image.Resampling.BILINEAR)
                    array = np.asarray(image, dtype=np.uint8)
            except OSError as error:
                raise DatasetError(f"{flag}: {path} is not a readable image ({error})") from error
            return array[..., np.newaxis] if grey else array

        images = np.stack(list(pool.map(decode, files)))
    return images[: len(train_files)], images[len(train_files) :]


def load_npz(path: str) -> ArraySource:
    """Reads `npz:PATH`; see the module docstring for the expected arrays."""
    flag = f"--dataset=npz:{path}"
    file = pathlib.Path(path).expanduser()
    if not file.is_file():
        raise DatasetError(f"{flag}: no such file; expected a .npz with arrays {', '.join(NPZ_KEYS)}")
    try:
        with np.load(file, allow_pickle=False) as archive:
            missing = [k for k in NPZ_KEYS if k not in archive.files]
            if missing:
                raise DatasetError(
                    f"{flag}: missing array(s) {', '.join(missing)}; the file must hold "
                    f"{', '.join(NPZ_KEYS)} (found: {', '.join(archive.files) or 'none'})"
                )
            arrays = {k: archive[k] for k in NPZ_KEYS}
    except DatasetError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DatasetError(f"{flag}: not a readable numpy .npz file without pickled objects ({error})") from error

    x_train = check_images(arrays["x_train"], what=f"{flag} x_train")
    x_test = check_images(arrays["x_test"], what=f"{flag} x_test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"{flag}: x_train images are {x_train.shape[1:]} but x_test images are {x_test.shape[1:]}; "
            "both must have the same (H, W, C)"
        )
    y_train = check_labels(arrays["y_train"], what=f"{flag} y_train", num_images=x_train.shape[0])
    num_classes = int(y_train.max()) + 1
    if num_classes < 2:
        raise DatasetError(f"{flag} y_train: all labels are {num_classes - 1}; need at least 2 classes")
    y_test = check_labels(
        arrays["y_test"],
        what=f"{flag} y_test",
        num_images=x_test.shape[0],
        num_classes=num_classes,
    )
    return ArraySource(
        name=f"npz:{path}",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        augmentation="none",
    )
