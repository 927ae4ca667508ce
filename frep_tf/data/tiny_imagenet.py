"""Tiny-ImageNet-200 as a tfds dataset builder of our own, prepared from a manual download.

tfds has no Tiny-ImageNet, and its archive sits behind a plain HTTP link that users fetch
themselves, so the builder reads the official `tiny-imagenet-200.zip` (or its unpacked folder) from
tfds's manual dir, `<data_dir>/downloads/manual/`:

    tiny-imagenet-200/wnids.txt                         one class id (wnid) per line
    tiny-imagenet-200/train/<wnid>/images/*.JPEG        500 per class, 64x64
    tiny-imagenet-200/val/images/*.JPEG                 10,000 images, 50 per class
    tiny-imagenet-200/val/val_annotations.txt           <file>\\t<wnid>\\t<bbox...>

The classes are the lines of wnids.txt in order (200 in the official archive). The official test
images carry no labels, so the labelled validation set serves as our test split ("validation" in
the builder). A few official images are greyscale; they are stored as RGB.

This module imports tensorflow_datasets at import time (the builder subclasses a tfds class);
`frep_tf.data` imports it only when tiny_imagenet is asked for.
"""

from __future__ import annotations

import io
import os
import pathlib
import zipfile
from typing import ClassVar

import tensorflow_datasets as tfds

from frep_tf.data.errors import DatasetError
from frep_tf.data.source import StreamSource
from frep_tf.data.tfds_loaders import is_prepared

ARCHIVE_NAME = "tiny-imagenet-200.zip"
FOLDER_NAME = "tiny-imagenet-200"
ARCHIVE_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
IMAGE_SHAPE = (64, 64, 3)
TEST_SPLIT = "validation"
JPEG_QUALITY = 95


class TinyImagenet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Tiny-ImageNet-200 from the official archive in the manual dir (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Train and labelled validation images of the official archive."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Download {ARCHIVE_URL} and put {ARCHIVE_NAME} (or the folder {FOLDER_NAME}/ it unpacks "
        "to) into the manual dir, by default <data_dir>/downloads/manual/."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Tiny-ImageNet-200: 64x64 images of the classes listed in wnids.txt.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE, encoding_format="jpeg"),
                    # Names come from wnids.txt when the data is prepared.
                    "label": tfds.features.ClassLabel(),
                    "id": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://cs231n.stanford.edu/",
        )

    def _split_generators(self, dl_manager):
        manual_dir = pathlib.Path(os.fspath(dl_manager.manual_dir))
        tree = open_source_tree(manual_dir)
        if tree is None:
            raise DatasetError(missing_message(manual_dir, data_dir_root=self.data_dir_root))
        wnids = tree.read_text("wnids.txt").split()
        if not wnids:
            raise DatasetError(f"{tree.where('wnids.txt')}: lists no class ids")
        self.info.features["label"].names = wnids
        return {
            "train": self._generate_examples(tree, "train", wnids),
            TEST_SPLIT: self._generate_examples(tree, TEST_SPLIT, wnids),
        }

    def _generate_examples(self, tree, split, wnids):
        if split == "train":
            labelled = _train_files(tree, wnids)
        else:
            labelled = _validation_files(tree, set(wnids))
        for path, wnid in labelled:
            name = path.rsplit("/", 1)[-1]
            yield name, {"image": _as_rgb(tree, path), "label": wnid, "id": name}


def _train_files(tree, wnids):
    """(path, wnid) of every training image, class by class."""
    for wnid in wnids:
        files = tree.list_files(f"train/{wnid}/images")
        if not files:
            raise DatasetError(f"{tree.where(f'train/{wnid}/images')}: no training images for class {wnid}")
        for path in files:
            yield path, wnid


def _validation_files(tree, wnids):
    """(path, wnid) of every validation image, from val_annotations.txt."""
    annotations = tree.read_text("val/val_annotations.txt")
    for line_number, line in enumerate(annotations.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in wnids:
            raise DatasetError(
                f"{tree.where('val/val_annotations.txt')} line {line_number}: expected "
                f"'<file>\\t<wnid>...' with a wnid from wnids.txt; found {line[:80]!r}"
            )
        yield f"val/images/{fields[0]}", fields[1]


def _as_rgb(tree, path: str):
    """JPEG bytes of the 64x64 RGB image at `path`: as stored when already RGB JPEG, else re-encoded."""
    from PIL import Image

    data = tree.read_bytes(path)
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.size != IMAGE_SHAPE[1::-1]:
                raise DatasetError(
                    f"{tree.where(path)}: image is {image.size[0]}x{image.size[1]}; Tiny-ImageNet images are 64x64"
                )
            if image.mode == "RGB" and image.format == "JPEG":
                return data
            # Re-encoding here with Pillow avoids tfds's TF-graph encoder for the few odd images.
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
            return buffer.getvalue()
    except OSError as error:
        raise DatasetError(f"{tree.where(path)}: not a readable image ({error})") from error


class _ZipTree:
    """Files of the dataset inside the zip archive, addressed relative to the folder of wnids.txt."""

    def __init__(self, path: pathlib.Path):
        self._path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as error:
            raise DatasetError(f"{path}: not a readable zip archive ({error})") from error
        names = self._zip.namelist()
        roots = sorted(
            (n[: -len("wnids.txt")] for n in names if n.rsplit("/", 1)[-1] == "wnids.txt"),
            key=len,
        )
        if not roots:
            raise DatasetError(f"{path}: no wnids.txt inside; expected the official {ARCHIVE_NAME}")
        self._root = roots[0]
        self._names = set(names)
        self._folders: dict[str, list[str]] = {}  # relative folder -> sorted relative file paths
        for name in sorted(names):
            if name.startswith(self._root) and not name.endswith("/"):
                relative = name[len(self._root) :]
                self._folders.setdefault(relative.rpartition("/")[0], []).append(relative)

    def where(self, rel: str) -> str:
        return f"{self._path}:{self._root}{rel}"

    def read_bytes(self, rel: str) -> bytes:
        if self._root + rel not in self._names:
            raise DatasetError(f"{self.where(rel)}: missing from the archive")
        return self._zip.read(self._root + rel)

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def list_files(self, rel_dir: str) -> list[str]:
        return self._folders.get(rel_dir.rstrip("/"), [])


class _FolderTree:
    """Files of the unpacked dataset, addressed relative to the folder of wnids.txt."""

    def __init__(self, root: pathlib.Path):
        self._root = root

    def where(self, rel: str) -> str:
        return os.fspath(self._root / rel)

    def read_bytes(self, rel: str) -> bytes:
        path = self._root / rel
        if not path.is_file():
            raise DatasetError(f"{path}: missing from the unpacked {FOLDER_NAME} folder")
        return path.read_bytes()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def list_files(self, rel_dir: str) -> list[str]:
        folder = self._root / rel_dir
        if not folder.is_dir():
            return []
        return sorted(f"{rel_dir.rstrip('/')}/{p.name}" for p in folder.iterdir() if p.is_file())


def open_source_tree(manual_dir: pathlib.Path):
    """The archive or unpacked folder in `manual_dir`, or None when neither is there."""
    archive = manual_dir / ARCHIVE_NAME
    if archive.is_file():
        return _ZipTree(archive)
    for folder in (manual_dir / FOLDER_NAME, manual_dir):
        if (folder / "wnids.txt").is_file():
            return _FolderTree(folder)
    return None


def manual_dir_for(builder) -> pathlib.Path:
    """tfds's default manual dir for `builder`: <data_dir>/downloads/manual."""
    return pathlib.Path(os.fspath(builder.data_dir_root)) / "downloads" / "manual"


def missing_message(manual_dir: pathlib.Path, *, data_dir_root) -> str:
    return (
        f"--dataset=tiny_imagenet: {manual_dir / ARCHIVE_NAME} not found; download {ARCHIVE_URL} "
        f"and put {ARCHIVE_NAME} (or the {FOLDER_NAME}/ folder it unpacks to) into {manual_dir}, "
        f"i.e. <--data_dir>/downloads/manual with --data_dir={os.fspath(data_dir_root)}"
    )


def check_available(*, data_dir: str | None) -> TinyImagenet:
    """Raises DatasetError unless Tiny-ImageNet is prepared or its archive is in the manual dir.

    Does not import TensorFlow; returns the builder.
    """
    builder = TinyImagenet(data_dir=data_dir)
    if not is_prepared(builder):
        manual_dir = manual_dir_for(builder)
        if open_source_tree(manual_dir) is None:
            raise DatasetError(missing_message(manual_dir, data_dir_root=builder.data_dir_root))
    return builder


def load_tiny_imagenet(*, data_dir: str | None) -> StreamSource:
    """Prepares Tiny-ImageNet on first use from the manual dir, then reads it like any tfds dataset."""
    builder = check_available(data_dir=data_dir)
    if not is_prepared(builder):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir_for(builder)))
    read_config = tfds.ReadConfig(try_autocache=False)
    train = builder.as_dataset(split="train", as_supervised=True, shuffle_files=False, read_config=read_config)
    test = builder.as_dataset(
        split=TEST_SPLIT,
        as_supervised=True,
        shuffle_files=False,
        read_config=read_config,
    )
    return StreamSource(
        name="tiny_imagenet",
        train=train,
        test=test,
        num_train=builder.info.splits["train"].num_examples,
        num_test=builder.info.splits[TEST_SPLIT].num_examples,
        image_shape=IMAGE_SHAPE,
        num_classes=int(builder.info.features["label"].num_classes),
        augmentation="crop_flip",
    )
