"""Make your own Keras model adversarially robust and extremely sparse with frep_tf (docs/library.md).

    python examples/prune_your_model.py                              # both models on Fashion-MNIST
    python examples/prune_your_model.py --quick                      # a small subset, 2 epochs: see it all run
    python examples/prune_your_model.py --quick --model sequential   # the Sequential CNN only
    python examples/prune_your_model.py --data digits                # scikit-learn's digits (no data to install)

Two models that know nothing of frep_tf: a small Sequential CNN written below, and keras.applications'
MobileNetV2 (alpha 0.35, 32x32x3 inputs, trained from scratch, logits out). Each is reparameterized,
trained by its own `fit` with single-step adversarial training (SRE), a cosine learning rate and frep_tf's
callbacks (temporal ensemble, one global prune to --sparsity, 90 % by default), then its ensemble is
exported (.keras, SavedModel, TFLite dense and sparse; every file checked against Keras on its way out).
The script reloads the exported files and prints their sparsity, the clean and PGD-10 accuracy of
model.keras and the clean accuracy of model_sparse.tflite (LiteRT) on validation images held out from
the training set (the test set is not used), and the size of each file.

The data are Fashion-MNIST's 28x28 grey images (`apt-get install dataset-fashion-mnist`, or --data_dir
holding the four IDX files), zero-padded to 32x32 and repeated to 3 channels for MobileNetV2; or, with
--data digits, scikit-learn's bundled 8x8 digits (8x8x1 for the CNN, upsampled to 32x32x3).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODELS = ("sequential", "mobilenetv2")
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
# (model, --quick): training images, epochs and batch size; the prune happens at the start of the epoch
# 30 % in. The default run of both models takes under half an hour on one CPU core (BENCHMARKS.md,
# "Library example").
SETTINGS = {
    ("sequential", False): dict(train=30000, epochs=10, batch_size=64),
    ("mobilenetv2", False): dict(train=20000, epochs=10, batch_size=64),
    ("sequential", True): dict(train=2048, epochs=2, batch_size=32),
    ("mobilenetv2", True): dict(train=512, epochs=2, batch_size=32),
}


def load(args):
    """All training images in [0, 1] as (N, H, W, 1) float32, and their labels."""
    import numpy as np

    if args.data == "digits":
        from sklearn.datasets import load_digits

        data = load_digits()
        return (data.images / 16.0).astype("float32")[..., None], data.target.astype("int32")
    from frep_tf.data.errors import DatasetError
    from frep_tf.data.fashion_mnist import idx_paths, read_idx_dir

    if idx_paths(args.data_dir) is None:
        sys.exit(
            f"prune_your_model.py: no Fashion-MNIST IDX files in {args.data_dir}: `apt-get install "
            "dataset-fashion-mnist`, pass --data_dir=DIR holding the four IDX files, or use --data digits"
        )
    try:
        arrays = read_idx_dir(args.data_dir)  # checked against the upstream MD5s
    except DatasetError as error:  # a corrupt or truncated file: the message names it
        sys.exit(f"prune_your_model.py: {error}")
    # The training set only: validation images are held out from it, the test set stays untouched.
    return (arrays["x_train"] / np.float32(255.0))[..., None], arrays["y_train"].astype("int32")


def split(x, y, train: int, val: int, size: int, channels: int):
    """(x_train, y_train, x_val, y_val): a seeded shuffle, the first `val` images held out; images
    zero-padded (Fashion-MNIST 28 -> 32) or repeated (digits 8 -> 32) to `size`, repeated to `channels`."""
    import numpy as np

    order = np.random.default_rng(0).permutation(len(x))
    x_val, y_val = x[order[:val]], y[order[:val]]
    x_train, y_train = x[order[val : val + train]], y[order[val : val + train]]

    def shape(images):
        side = images.shape[1]
        if size % side == 0:
            images = images.repeat(size // side, axis=1).repeat(size // side, axis=2)
        else:
            pad = (size - side) // 2
            images = np.pad(images, ((0, 0), (pad, size - side - pad), (pad, size - side - pad), (0, 0)))
        return np.ascontiguousarray(images.repeat(channels, axis=-1))

    return shape(x_train), y_train, shape(x_val), y_val


def my_cnn(input_shape):
    """A model as anyone would write it: Conv2D with activations, BatchNorm, Flatten, Dense."""
    import keras

    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.BatchNormalization(),
            layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            layers.BatchNormalization(),
            layers.Conv2D(64, 3, strides=2, padding="same", activation="relu"),
            layers.BatchNormalization(),
            layers.Flatten(),
            layers.Dense(10),  # logits: frep_tf trains and attacks logits
        ],
        name="my_cnn",
    )


def mobilenet():
    import keras

    net = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10, classifier_activation=None
    )
    # keras.applications' BatchNorm momentum (0.999) is made for long ImageNet runs: in a run of a few
    # thousand steps the moving statistics that inference uses lag far behind the weights (5 epochs of
    # 10,000 images left the validation accuracy at chance while the training accuracy was 52 %).
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return net


def make_robust_and_sparse(net, data, args, epochs: int, batch_size: int):
    """The library in five calls: reparameterize, RobustModel, compile, fit with frep_tf.callbacks."""
    import keras

    import frep_tf

    x_train, y_train, x_val, y_val = data
    robust = frep_tf.RobustModel(frep_tf.reparameterize(net), objective="sre", epsilon=args.epsilon)
    steps = epochs * -(-len(x_train) // batch_size)
    robust.compile(optimizer=keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(args.lr, steps), momentum=0.9))
    robust.fit(
        x_train,
        y_train,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(x_val, y_val),
        verbose=2,
        callbacks=frep_tf.callbacks(
            sparsity=args.sparsity,
            prune_epoch=max(1, epochs * 3 // 10),
            min_layer_density=args.min_layer_density,
            ensemble_interval=args.ensemble_interval,
        ),
    )
    return robust


def sparsity(model) -> tuple[float, float]:
    """Zeros among the Conv2D/Dense kernels, and among all parameters (not BatchNorm statistics), of a
    standard Keras model."""
    import keras
    import numpy as np

    def zeros(weights) -> float:
        return sum(int(np.sum(np.asarray(w) == 0)) for w in weights) / max(sum(int(np.size(w)) for w in weights), 1)

    kernels = [layer.kernel for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    return zeros(kernels), zeros([w for w in model.weights if "moving" not in w.path])


def tflite_logits(path: str, x):
    """Logits of a .tflite file on the batch `x`, with the LiteRT interpreter (what a device runs)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    (given,), (taken,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(given["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], np.asarray(x, np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(taken["index"])


def report(name: str, records, data, args) -> None:
    """Attack what was exported: model.keras reloaded (PGD needs gradients), model_sparse.tflite as LiteRT runs it."""
    import keras
    import numpy as np

    import frep_tf

    files = {os.path.basename(r.path): r for r in records}
    exported = keras.models.load_model(files["model.keras"].path, compile=False)
    kernels, everything = sparsity(exported)
    x_val, y_val = data[2][: args.eval_samples], data[3][: args.eval_samples]
    results = frep_tf.evaluate.evaluate_model(
        exported,
        x_val,
        y_val,
        epsilon=args.epsilon,
        attacks=("clean", "pgd"),
        pgd_steps=10,
        sanity=False,
        progress=False,
    )
    lite = float(np.mean(tflite_logits(files["model_sparse.tflite"].path, x_val).argmax(-1) == y_val))
    print(
        f"{name}: {100 * kernels:.1f} % of the Conv2D/Dense weights are zero ({100 * everything:.1f} % of all "
        f"parameters); model.keras: clean accuracy {results['clean']['accuracy']:.3f}, PGD-10 accuracy "
        f"{results['pgd']['accuracy']:.3f} at eps {args.epsilon:g}; model_sparse.tflite: clean accuracy {lite:.3f} "
        f"({len(x_val)} {args.data} validation images, held out from the training set)"
    )
    for record in records:
        print(f"  {record.path}: {record.bytes / 1024:.1f} KiB")


def run(name: str, images, args) -> None:
    import keras

    import frep_tf

    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    settings = SETTINGS[(name, args.quick)]
    epochs = args.epochs or settings["epochs"]
    train = args.train_samples or settings["train"]
    batch_size = args.batch_size or settings["batch_size"]
    val = args.val_samples or (300 if args.data == "digits" else 1000)
    if name == "sequential":
        data = split(*images, train, val, size=images[0].shape[1], channels=1)
        net = my_cnn(data[0].shape[1:])
    else:
        data = split(*images, train, val, size=32, channels=3)
        net = mobilenet()
    robust = make_robust_and_sparse(net, data, args, epochs, batch_size)
    records = frep_tf.export(robust, os.path.join(args.out, name), check_inputs=data[2][:32])
    report(name, records, data, args)
    print(
        f"  {len(data[0])} training images, {epochs} epochs of batch {batch_size}, {time.perf_counter() - start:.0f} s"
    )


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=(*MODELS, "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="2 epochs on a few thousand training images")
    parser.add_argument("--data", choices=("fashion_mnist", "digits"), default="fashion_mnist")
    parser.add_argument("--data_dir", default=FASHION_DIR, help="the four Fashion-MNIST IDX files (.gz or not)")
    parser.add_argument("--epochs", type=int, help="default: 10 (2 with --quick)")
    parser.add_argument("--train_samples", type=int, help="training images; default: per model (SETTINGS)")
    parser.add_argument("--val_samples", type=int, help="held out from the training set; default 1000 (digits 300)")
    parser.add_argument("--eval_samples", type=int, default=1000, help="validation images attacked at the end")
    parser.add_argument("--sparsity", type=float, default=0.9, help="share of Conv2D/Dense weights removed")
    parser.add_argument("--min_layer_density", type=float, default=0.01, help="every layer keeps at least this")
    parser.add_argument("--epsilon", type=float, default=0.1, help="L-inf radius on [0, 1] pixels")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch_size", type=int, help="default: 64 (32 with --quick)")
    parser.add_argument("--ensemble_interval", type=int, help="optimizer steps between ensemble updates; 10 (quick: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="prune_your_model_out", help="the exported files go under here")
    args = parser.parse_args(argv)
    if args.quick:
        args.val_samples = args.eval_samples = min(args.val_samples or 200, args.eval_samples, 200)
    args.ensemble_interval = args.ensemble_interval or (1 if args.quick else 10)
    return args


def main(argv=None) -> None:
    args = parse(argv)
    images = load(args)
    for name in MODELS if args.model == "both" else (args.model,):
        run(name, images, args)


if __name__ == "__main__":
    main()
