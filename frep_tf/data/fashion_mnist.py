"""Fashion-MNIST (Xiao et al., 2017) offline: 60,000 train / 10,000 test 28x28 grey images, 10 classes.

Where the data is found, in order:
  1. `--data_dir` holding the four IDX files (plain or gzipped, upstream names);
  2. the Debian package `dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist` puts the
     files in /usr/share/datasets/fashion-mnist/);
  3. a prepared tfds `fashion_mnist` (in `--data_dir`, or tfds's default directory).
The IDX files are read with numpy and their decompressed contents checked against the upstream
MD5s (the Debian files' gzip headers differ from upstream's, so the hash is of what is inside the
gzip). Everything here before `load_fashion_mnist` is TensorFlow-free, so a missing or corrupt file
is reported in well under a second.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pathlib

import numpy as np

from frep_tf.data.errors import DatasetError
from frep_tf.data.source import ArraySource

NAME = "fashion_mnist"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
NUM_CLASSES = 10
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Garments are left-right symmetric, so a flip would be harmless, but the classic adversarial
# MNIST-family protocols use no flip; we keep the crop only (2-pixel padding for 28x28 images).
AUGMENTATION = "crop2"


@dataclasses.dataclass(frozen=True)
class IdxFile:
    stem: str  # upstream file name without .gz
    md5: str  # of the decompressed contents
    shape: tuple[int, ...]


FILES = {
    "x_train": IdxFile("train-images-idx3-ubyte", "f4a8712d7a061bf5bd6d2ca38dc4d50a", (60000, 28, 28)),
    "y_train": IdxFile("train-labels-idx1-ubyte", "9018921c3c673c538a1fc5bad174d6f9", (60000,)),
    "x_test": IdxFile("t10k-images-idx3-ubyte", "8181f5470baa50b63fa0f6fddb340f0a", (10000, 28, 28)),
    "y_test": IdxFile("t10k-labels-idx1-ubyte", "15d484375f8d13e6eb1aabb0c3f46965", (10000,)),
}

HOW_TO_PROVIDE = (
    f"install it with `apt-get install dataset-fashion-mnist` (files in {DEBIAN_DIR}/), or pass "
    "--data_dir=DIR holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] (or a prepared tfds fashion_mnist)"
)


def _find(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
    for name in (stem, stem + ".gz"):
        path = directory / name
        if path.is_file():
            return path
    return None


def idx_paths(directory: str | os.PathLike) -> dict[str, pathlib.Path] | None:
    """The four IDX files in `directory`, or None unless all four are there."""
    directory = pathlib.Path(directory).expanduser()
    if not directory.is_dir():
        return None
    found = {key: _find(directory, spec.stem) for key, spec in FILES.items()}
    return found if all(found.values()) else None


def _read_bytes(path: pathlib.Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"--dataset={NAME}: cannot read {path} ({exc}); {HOW_TO_PROVIDE}") from None


def parse_idx(raw: bytes, *, where: str) -> np.ndarray:
    """An IDX array (unsigned bytes only, which is what MNIST-style files hold)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"--dataset={NAME}: {where} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DatasetError(f"--dataset={NAME}: {where} is truncated or padded: header says shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_dir(directory: str | os.PathLike, *, check_md5: bool = True) -> dict[str, np.ndarray]:
    """{x_train, y_train, x_test, y_test} from the IDX files in `directory`, checked against their MD5s."""
    paths = idx_paths(directory)
    if paths is None:
        raise DatasetError(f"--dataset={NAME}: {directory} does not hold the four IDX files; {HOW_TO_PROVIDE}")
    arrays = {}
    for key, spec in FILES.items():
        raw = _read_bytes(paths[key])
        if check_md5:
            digest = hashlib.md5(raw).hexdigest()
            if digest != spec.md5:
                raise DatasetError(
                    f"--dataset={NAME}: {paths[key]} has MD5 {digest} (decompressed) but {spec.stem} should have "
                    f"{spec.md5}: the file is corrupt or another dataset's; {HOW_TO_PROVIDE}"
                )
        array = parse_idx(raw, where=str(paths[key]))
        if array.shape != spec.shape:
            raise DatasetError(f"--dataset={NAME}: {paths[key]} has shape {array.shape}, expected {spec.shape}")
        arrays[key] = array
    return arrays


def locate(data_dir: str | None) -> tuple[str, str]:
    """("idx", directory) or ("tfds", data_dir) for where the data is; DatasetError naming where we looked."""
    looked = []
    if data_dir:
        if idx_paths(data_dir) is not None:
            return "idx", str(data_dir)
        looked.append(f"--data_dir={data_dir} (no IDX files)")
    if idx_paths(DEBIAN_DIR) is not None:
        return "idx", DEBIAN_DIR
    looked.append(f"{DEBIAN_DIR} (not installed)")
    if _tfds_prepared(data_dir):
        return "tfds", data_dir or ""
    looked.append(f"tfds fashion_mnist in {data_dir or 'the tfds default directory'} (not prepared)")
    raise DatasetError(f"--dataset={NAME}: not found; looked in " + ", ".join(looked) + f"; {HOW_TO_PROVIDE}")


def _tfds_prepared(data_dir: str | None) -> bool:
    """Whether tfds has a prepared fashion_mnist: a glance at the disk first (importing tfds takes seconds),
    then tfds itself (not TensorFlow) confirms."""
    root = pathlib.Path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()
    if not any((root / NAME).glob("*/dataset_info.json")):
        return False
    try:
        import tensorflow_datasets as tfds

        from frep_tf.data.tfds_loaders import is_prepared

        return is_prepared(tfds.builder(NAME, data_dir=data_dir))
    except DatasetError:
        raise
    except Exception:  # a tfds that cannot even build the builder has no data for us
        return False


def check_available(data_dir: str | None) -> None:
    """Raises DatasetError unless the data can be found and, for IDX files, their checksums match."""
    kind, where = locate(data_dir)
    if kind == "idx":
        read_idx_dir(where)


def load_fashion_mnist(data_dir: str | None = None) -> ArraySource:
    kind, where = locate(data_dir)
    if kind == "idx":
        arrays = read_idx_dir(where)
    else:
        arrays = _load_tfds(where or None)
    return ArraySource(
        name=NAME,
        x_train=arrays["x_train"].reshape(-1, 28, 28, 1),
        y_train=arrays["y_train"].astype(np.int32),
        x_test=arrays["x_test"].reshape(-1, 28, 28, 1),
        y_test=arrays["y_test"].astype(np.int32),
        num_classes=NUM_CLASSES,
        augmentation=AUGMENTATION,
    )


def _load_tfds(data_dir: str | None) -> dict[str, np.ndarray]:
    import tensorflow_datasets as tfds

    arrays = {}
    for split, (xk, yk) in (("train", ("x_train", "y_train")), ("test", ("x_test", "y_test"))):
        x, y = tfds.as_numpy(
            tfds.load(NAME, split=split, data_dir=data_dir, batch_size=-1, as_supervised=True, download=False)
        )
        arrays[xk], arrays[yk] = np.asarray(x, np.uint8), np.asarray(y)
    return arrays
