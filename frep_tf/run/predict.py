"""`--mode=predict`: the predicted class and its probability for each image, from any exported file.

    python main.py --mode=predict --model=runs/q/export/model_int8.tflite --images=some_digits/
    python main.py --mode=predict --model=runs/q/export/model.keras --images=batch.npz --predictions=out.csv

The model's own preprocessing is what the exported files contain: they take [0, 1] float pixels and
normalise inside. Images are therefore only decoded and scaled: a folder's images (any format Pillow
reads, searched recursively, in sorted path order) are converted to the model's channels (greyscale
"L" for one, "RGB" for three) and divided by 255; a .npz holds one image array, named `x`, `images`
or `x_test` (or its only array), (N, H, W, C) or (N, H, W), uint8 in [0, 255] or float in [0, 1].
Their height and width must be the model's: a wrong shape is refused, never resized silently.
A person deploying checks a file this way before copying it to a device.
"""

from __future__ import annotations

import csv
import io
import os
import pathlib
import zipfile

import numpy as np

from frep_tf.config import Config, ConfigError

NPZ_IMAGE_KEYS = ("x", "images", "x_test")
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def _bad(path: str, what: str) -> ConfigError:
    return ConfigError(f"--images={path}: {what}")


def check_images_path(path: str) -> None:
    """TensorFlow-free checks: the path exists and is a folder or a .npz file."""
    if not path or not os.path.exists(path):
        raise _bad(path, "no such file or directory")
    if os.path.isdir(path):
        return
    if not path.endswith(".npz"):
        raise _bad(path, "expected a folder of images or a .npz file")
    if not zipfile.is_zipfile(path):
        raise _bad(path, "not a numpy .npz archive")


def model_input_shape(path: str):
    """(H, W, C) the exported model at `path` takes, or None if the file does not say."""
    if path.endswith(".tflite"):
        from frep_tf.tflite import TFLiteModel

        return tuple(TFLiteModel(path).input_shape)
    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            import json

            config = json.loads(archive.read("config.json"))
        layers = config.get("config", {}).get("layers", [])
        for layer in layers:
            if layer.get("class_name") == "InputLayer":
                shape = layer["config"].get("batch_shape") or layer["config"].get("batch_input_shape")
                return tuple(shape[1:]) if shape else None
        return None
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        return None
    spec = next(iter(signature.structured_input_signature[1].values()))
    return tuple(spec.shape[1:])


def load_images(path: str, shape) -> tuple[list[str], np.ndarray]:
    """(names, float32 images in [0, 1]) from a folder or a .npz, checked against the model's (H, W, C)."""
    check_images_path(path)
    h, w, c = shape
    if os.path.isdir(path):
        names, x = _load_folder(path, c)
    else:
        names, x = _load_npz(path)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4 or tuple(x.shape[1:]) != (h, w, c):
        got = "x".join(map(str, x.shape[1:])) if x.ndim == 4 else f"of shape {x.shape}"
        raise _bad(path, f"images are {got}, the model takes {h}x{w}x{c} (height x width x channels)")
    if np.issubdtype(x.dtype, np.integer):
        if x.min() < 0 or x.max() > 255:
            raise _bad(path, f"integer pixels must lie in [0, 255]; found [{x.min()}, {x.max()}]")
        return names, x.astype(np.float32) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise _bad(path, f"images must be an integer or float array; found dtype {x.dtype}")
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
        raise _bad(path, "float pixels must be finite and lie in [0, 1] (store uint8 for [0, 255])")
    return names, x.astype(np.float32)


def _load_folder(path: str, channels: int) -> tuple[list[str], np.ndarray]:
    from PIL import Image

    root = pathlib.Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise _bad(path, f"no images in the folder (extensions {', '.join(sorted(IMAGE_EXTENSIONS))})")
    mode = "L" if channels == 1 else "RGB"
    arrays, size = [], None
    for file in files:
        try:
            with Image.open(file) as image:
                array = np.asarray(image.convert(mode), np.uint8)
        except OSError as error:
            raise _bad(path, f"{file} is not a readable image ({error})") from error
        if size is not None and array.shape != size:
            raise _bad(
                path,
                f"images differ in size: {files[0].name} is {size[1]}x{size[0]}, {file.name} is "
                f"{array.shape[1]}x{array.shape[0]}",
            )
        size = array.shape
        arrays.append(array)
    return [str(f.relative_to(root)) for f in files], np.stack(arrays)


def _load_npz(path: str) -> tuple[list[str], np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            key = next((k for k in NPZ_IMAGE_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise _bad(
                    path, f"no image array: name it one of {', '.join(NPZ_IMAGE_KEYS)} (found {', '.join(keys)})"
                )
            x = data[key]
    except (OSError, ValueError) as error:
        raise _bad(path, f"cannot read the .npz ({type(error).__name__}: {error})") from error
    return [f"{key}[{i}]" for i in range(len(x))], x


def predict(model_path: str, images_path: str, *, batch_size: int = 256) -> list[tuple[str, int, float]]:
    """[(image name, predicted class, its softmax probability)] for every image."""
    from frep_tf.model_io import check_model_path, load_classifier

    check_model_path(model_path)
    check_images_path(images_path)
    shape = model_input_shape(model_path)
    if shape is None or None in shape:
        raise ConfigError(f"--model={model_path}: the file does not state the image shape it takes")
    names, x = load_images(images_path, shape)
    model_fn = load_classifier(model_path, input_shape=shape)
    logits = np.concatenate([np.asarray(model_fn(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    classes = probs.argmax(axis=1)
    return [(n, int(c), float(p[c])) for n, c, p in zip(names, classes, probs, strict=True)]


def to_csv(rows) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["image", "class", "probability"])
    for name, cls, prob in rows:
        writer.writerow([name, cls, f"{prob:.6f}"])
    return out.getvalue()


def run_predict(cfg: Config) -> dict:
    """Classify --images with --model (any exported format); print the CSV or write it to --predictions."""
    rows = predict(cfg.eval.model, cfg.eval.images, batch_size=cfg.data.eval_batch_size)
    text = to_csv(rows)
    if cfg.eval.predictions:
        tmp = cfg.eval.predictions + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, cfg.eval.predictions)
        print(f"[frep_tf] {len(rows)} predictions written to {cfg.eval.predictions}", flush=True)
    else:
        print(text, end="", flush=True)
    return {"mode": "predict", "predictions": [{"image": n, "class": c, "probability": p} for n, c, p in rows]}
