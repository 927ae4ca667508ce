"""Make your own Keras model adversarially robust and extremely sparse with frep_tf (docs/library.md).

    python examples/prune_your_model.py                              # both models (MobileNetV2: long on a CPU)
    python examples/prune_your_model.py --quick                      # a few epochs, to see it all run
    python examples/prune_your_model.py --quick --model sequential   # the Sequential CNN only

Two models that know nothing of frep_tf: a small Sequential CNN written below, and keras.applications'
MobileNetV2 (alpha 0.35, 32x32 inputs, trained from scratch, logits out). Each is reparameterized,
trained by its own `fit` with single-step adversarial training (SRE), a cosine learning rate and frep_tf's
callbacks (temporal ensemble, one global prune to --sparsity), then its ensemble is exported and checked.
The script prints the exported model's sparsity, its clean and PGD accuracy, and the size of each file.

The data are scikit-learn's bundled 8x8 digits (no download), upsampled to 32x32 RGB for MobileNetV2.
"""

from __future__ import annotations

import argparse
import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODELS = ("sequential", "mobilenetv2")


def digits(size: int, channels: int, samples: int):
    """Digits in [0, 1] as (size, size, channels) images: (x_train, y_train, x_val, y_val)."""
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")
    factor = size // 8
    x = np.repeat(np.repeat(x, factor, axis=1), factor, axis=2)[..., None].repeat(channels, axis=-1)
    y = data.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    val = 300
    return x[val : val + samples], y[val : val + samples], x[:val], y[:val]


def my_cnn():
    """A model as anyone would write it: Conv2D with activations, BatchNorm, Flatten, Dense."""
    import keras

    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
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

    return keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10, classifier_activation=None
    )


def make_robust_and_sparse(net, data, args, epochs: int, prune_epoch: int):
    """The library in five calls: reparameterize, RobustModel, compile, fit with frep_tf.callbacks."""
    import keras

    import frep_tf

    x_train, y_train, x_val, y_val = data
    robust = frep_tf.RobustModel(frep_tf.reparameterize(net), objective="sre", epsilon=args.epsilon)
    steps = epochs * -(-len(x_train) // args.batch_size)
    robust.compile(optimizer=keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(args.lr, steps), momentum=0.9))
    robust.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=epochs,
        validation_data=(x_val, y_val),
        verbose=2,
        callbacks=frep_tf.callbacks(
            sparsity=args.sparsity,
            prune_epoch=prune_epoch,
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


def report(name: str, robust, records, data, args) -> None:
    import frep_tf

    final = robust.ensemble  # what frep_tf.export wrote: the temporal ensemble, fused
    kernels, everything = sparsity(final)
    x_val, y_val = data[2][: args.eval_samples], data[3][: args.eval_samples]
    results = frep_tf.evaluate.evaluate_model(
        final, x_val, y_val, epsilon=args.epsilon, attacks=("clean", "pgd"), pgd_steps=10, sanity=False, progress=False
    )
    print(
        f"{name}: {100 * kernels:.1f} % of the Conv2D/Dense weights are zero ({100 * everything:.1f} % of all "
        f"parameters); clean accuracy {results['clean']['accuracy']:.3f}, PGD-10 accuracy "
        f"{results['pgd']['accuracy']:.3f} at eps {args.epsilon:g} ({len(x_val)} validation digits)"
    )
    for record in records:
        print(f"  {os.path.relpath(record.path)}: {record.bytes / 1024:.1f} KiB")


def run(name: str, args) -> None:
    import frep_tf

    quick = args.quick
    if name == "sequential":
        net, data = my_cnn(), digits(8, 1, 1497)
        epochs = 4 if quick else 30
    else:
        net, data = mobilenet(), digits(32, 3, 256 if quick else 1497)
        epochs = 2 if quick else 10
    robust = make_robust_and_sparse(net, data, args, epochs, prune_epoch=max(1, epochs * 3 // 10))
    out = os.path.join(args.out, name)
    records = frep_tf.export(robust, out, check_inputs=data[2][:32])
    report(name, robust, records, data, args)


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=(*MODELS, "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="a few epochs on fewer digits")
    parser.add_argument("--sparsity", type=float, default=0.95, help="share of Conv2D/Dense weights removed")
    parser.add_argument("--min_layer_density", type=float, default=0.01, help="every layer keeps at least this")
    parser.add_argument("--epsilon", type=float, default=0.1, help="L-inf radius on [0, 1] pixels")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--ensemble_interval", type=int, default=5, help="optimizer steps between ensemble updates")
    parser.add_argument("--eval_samples", type=int, default=100)
    parser.add_argument("--out", default="prune_your_model_out", help="the exported files go under here")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    for name in MODELS if args.model == "both" else (args.model,):
        run(name, args)


if __name__ == "__main__":
    main()
