"""The Tiny-ImageNet tfds builder, prepared from small archives in the official layout."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from frep_tf import data
from frep_tf.data import tiny_imagenet

WNIDS = ("n01443537", "n01629819", "n01641577")
TRAIN_PER_CLASS = 4
VAL_PER_CLASS = 2


def official_files(seed=0):
    """{relative path: bytes} of a 3-class Tiny-ImageNet in the official layout, plus val images and labels.

    One training image is greyscale, as a few official ones are.
    """
    rng = np.random.default_rng(seed)

    def jpeg(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=95)
        return buffer.getvalue()

    files = {"wnids.txt": ("\n".join(WNIDS) + "\n").encode(), "words.txt": b"n01443537\tgoldfish\n"}
    for wnid in WNIDS:
        files[f"train/{wnid}/{wnid}_boxes.txt"] = b""
        for i in range(TRAIN_PER_CLASS):
            shape = (64, 64) if (wnid, i) == (WNIDS[1], 0) else (64, 64, 3)
            files[f"train/{wnid}/images/{wnid}_{i}.JPEG"] = jpeg(rng.integers(0, 256, shape, dtype=np.uint8))
    val_images, val_labels, lines = [], [], []
    for k in range(VAL_PER_CLASS * len(WNIDS)):
        # Smooth images survive JPEG nearly unchanged, so the test can match them after decoding.
        image = np.full((64, 64, 3), rng.integers(20, 236, 3), dtype=np.uint8)
        files[f"val/images/val_{k}.JPEG"] = jpeg(image)
        lines.append(f"val_{k}.JPEG\t{WNIDS[k % 3]}\t0\t0\t63\t63")
        val_images.append(image / 255.0)
        val_labels.append(k % 3)
    files["val/val_annotations.txt"] = ("\n".join(lines) + "\n").encode()
    return files, np.stack(val_images), np.array(val_labels)


def write_archive(manual_dir, files, root="tiny-imagenet-200/"):
    manual_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(manual_dir / "tiny-imagenet-200.zip", "w") as archive:
        for path, content in files.items():
            archive.writestr(root + path, content)


def write_folder(folder, files):
    for path, content in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(content)


def test_builder_prepares_the_official_archive(tmp_path):
    files, val_images, val_labels = official_files()
    write_archive(tmp_path / "downloads" / "manual", files)

    splits = data.load_dataset("tiny_imagenet", data_dir=str(tmp_path), batch_size=5, val_size=2, seed=0)
    info = splits.info
    assert (info.name, info.image_shape, info.num_classes) == ("tiny_imagenet", (64, 64, 3), 3)
    assert (info.num_train, info.num_val, info.num_test) == (10, 2, 6)
    assert info.augmentation == "random 64x64 crop from 4-pixel zero padding + random horizontal flip"
    assert (tmp_path / "tiny_imagenet" / "1.0.0" / "dataset_info.json").is_file()

    for x, y in splits.train.as_numpy_iterator():
        assert x.shape == (5, 64, 64, 3) and x.dtype == np.float32 and y.dtype == np.int32
        assert 0.0 <= x.min() and x.max() <= 1.0 and 0 <= y.min() and y.max() < 3
    assert sum(1 for _ in splits.train) == 2

    # The test split is the labelled official validation set, labels from val_annotations.txt.
    x_test, y_test = data.dataset_arrays(splits.test)
    assert x_test.shape == (6, 64, 64, 3) and sorted(y_test) == sorted(val_labels)
    for image, label in zip(x_test, y_test, strict=True):
        distances = np.abs(val_images - image).mean(axis=(1, 2, 3))
        assert distances.min() < 0.01 and val_labels[distances.argmin()] == label

    # The greyscale training image is stored as RGB with three equal channels.
    unaugmented = data.load_dataset("tiny_imagenet", data_dir=str(tmp_path), batch_size=6, val_size=0, augment=False)
    x_train = np.concatenate([x for x, _ in unaugmented.train.as_numpy_iterator()])
    grey = [
        np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
        for image in x_train
    ]
    assert sum(grey) == 1


def test_builder_reads_the_unpacked_folder(tmp_path):
    files, _, _ = official_files(seed=1)
    write_folder(tmp_path / "downloads" / "manual" / "tiny-imagenet-200", files)
    splits = data.load_dataset("tiny_imagenet", data_dir=str(tmp_path), batch_size=4, val_size=0)
    assert (splits.info.num_train, splits.info.num_val, splits.info.num_test, splits.info.num_classes) == (12, 0, 6, 3)


def test_missing_archive_names_the_file_and_where_to_put_it(tmp_path):
    with pytest.raises(data.DatasetError) as error:
        data.load_dataset("tiny_imagenet", data_dir=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert f"{tmp_path / 'downloads' / 'manual' / 'tiny-imagenet-200.zip'} not found" in message
    assert "http://cs231n.stanford.edu/tiny-imagenet-200.zip" in message
    assert f"--data_dir={tmp_path}" in message
    assert not (tmp_path / "tiny_imagenet").exists()


def test_broken_archive_names_the_missing_member(tmp_path):
    files, _, _ = official_files()
    del files["val/val_annotations.txt"]
    write_archive(tmp_path / "downloads" / "manual", files)
    with pytest.raises(data.DatasetError, match=r"tiny-imagenet-200/val/val_annotations.txt: missing from the archive"):
        data.load_dataset("tiny_imagenet", data_dir=str(tmp_path))


def test_wrong_image_size_is_reported(tmp_path):
    files, _, _ = official_files()
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="JPEG")
    files[f"train/{WNIDS[0]}/images/{WNIDS[0]}_0.JPEG"] = buffer.getvalue()
    write_folder(tmp_path / "downloads" / "manual" / "tiny-imagenet-200", files)
    with pytest.raises(data.DatasetError, match=r"n01443537_0.JPEG: image is 32x32; Tiny-ImageNet images are 64x64"):
        data.load_dataset("tiny_imagenet", data_dir=str(tmp_path))


def test_builder_instructions_name_the_archive():
    assert tiny_imagenet.ARCHIVE_NAME in tiny_imagenet.TinyImagenet.MANUAL_DOWNLOAD_INSTRUCTIONS
