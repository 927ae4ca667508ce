"""Does the input pipeline ever bound training? Images per second of the training input pipeline.

Measures, on CIFAR-shaped data (32x32x3) with the CIFAR augmentation (random crop from 4-pixel
padding + horizontal flip):
  1. the training pipeline alone: images/s it delivers when nothing else runs;
  2. one training step of a small CNN (or the step time passed with --step_ms, e.g. a ResNet-18
     FReP step from benchmarks/train_step.py): images/s training consumes;
  3. unless --step_ms is given, the same training fed by the pipeline versus fed one fixed batch
     held in memory, so the input cost that remains visible while both share the CPU shows directly.

The default source is uint8 arrays, i.e. what a cached tfds CIFAR split holds after the first
epoch; --source=synthetic uses frep_tf's float32 `synthetic` dataset instead.

    python benchmarks/input_pipeline.py --batch_size=128 --steps=200 --json=/tmp/input.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

CIFAR_SHAPE = (32, 32, 3)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200, help="pipeline batches timed")
    parser.add_argument("--train_steps", type=int, default=30, help="training steps timed per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating training rounds; the fastest counts")
    parser.add_argument("--warmup", type=int, default=20, help="batches run before timing")
    parser.add_argument("--num_examples", type=int, default=50_000, help="training examples")
    parser.add_argument("--source", choices=("uint8", "synthetic"), default="uint8")
    parser.add_argument("--no_augment", action="store_true", help="turn augmentation off")
    parser.add_argument("--deterministic", action="store_true")
    parser.add_argument(
        "--step_ms",
        type=float,
        default=None,
        help="training step time to compare with; measured on a small CNN when omitted",
    )
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def build_train(args):
    import numpy as np

    from frep_tf import data
    from frep_tf.data.pipeline import build_splits
    from frep_tf.data.source import ArraySource

    augmentation = "none" if args.no_augment else "crop_flip"
    if args.source == "synthetic":
        splits = data.load_dataset(
            "synthetic",
            batch_size=args.batch_size,
            val_size=0,
            synthetic_shape=CIFAR_SHAPE,
            synthetic_size=(args.num_examples, args.batch_size),
            augmentation=augmentation,
            deterministic=args.deterministic,
        )
    else:
        rng = np.random.default_rng(0)
        source = ArraySource(
            name="cifar-shaped uint8",
            x_train=rng.integers(0, 256, (args.num_examples, *CIFAR_SHAPE), dtype=np.uint8),
            y_train=rng.integers(0, 10, args.num_examples).astype(np.int32),
            x_test=np.zeros((args.batch_size, *CIFAR_SHAPE), np.uint8),
            y_test=np.zeros(args.batch_size, np.int32),
            num_classes=10,
            augmentation=augmentation,
        )
        splits = build_splits(
            source,
            batch_size=args.batch_size,
            eval_batch_size=args.batch_size,
            val_size=0,
            seed=0,
            augment=True,
            augmentation=None,
            image_size=None,
            deterministic=args.deterministic,
        )
    return splits


def pipeline_images_per_second(train, *, batch_size: int, steps: int, warmup: int) -> float:
    iterator = iter(train.repeat())
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch_size / (time.perf_counter() - start)


def small_cnn(num_classes: int = 10):
    import keras

    model = keras.Sequential(
        [
            keras.Input(CIFAR_SHAPE),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def fit_ms_per_step(model, dataset, *, steps: int) -> float:
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return 1000.0 * (time.perf_counter() - start) / steps


def compare_training(model, in_memory, fed, *, steps: int, warmup: int, rounds: int) -> tuple[float, float]:
    """Fastest ms per step over `rounds` alternating runs (other load on the machine only slows down)."""
    fit_ms_per_step(model, in_memory, steps=warmup)
    fit_ms_per_step(model, fed, steps=warmup)
    in_memory_ms, fed_ms = [], []
    for _ in range(rounds):
        in_memory_ms.append(fit_ms_per_step(model, in_memory, steps=steps))
        fed_ms.append(fit_ms_per_step(model, fed, steps=steps))
    return min(in_memory_ms), min(fed_ms)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import tensorflow as tf

    splits = build_train(args)
    pipeline_ips = pipeline_images_per_second(
        splits.train, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup
    )
    result = {
        "batch_size": args.batch_size,
        "source": args.source,
        "augmentation": splits.info.augmentation,
        "deterministic": args.deterministic,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine slows every figure
        "pipeline_images_per_s": round(pipeline_ips, 1),
        "pipeline_ms_per_batch": round(1000.0 * args.batch_size / pipeline_ips, 3),
    }
    if args.step_ms is not None:
        result.update(step_ms=args.step_ms, step_source="given (--step_ms)")
    else:
        model = small_cnn()
        fixed_batch = next(iter(splits.train))
        in_memory = tf.data.Dataset.from_tensors(fixed_batch).repeat()
        step_ms, fed_ms = compare_training(
            model,
            in_memory,
            splits.train.repeat(),
            steps=args.train_steps,
            warmup=min(args.warmup, 5),
            rounds=args.rounds,
        )
        result.update(
            step_ms=round(step_ms, 3),
            step_source="measured: small CNN, natural training, one in-memory batch",
            fed_step_ms=round(fed_ms, 3),
            input_overhead_ms=round(fed_ms - step_ms, 3),
        )
    train_ips = 1000.0 * args.batch_size / result["step_ms"]
    result["train_images_per_s"] = round(train_ips, 1)
    result["pipeline_over_train"] = round(pipeline_ips / train_ips, 2)

    print(
        f"input pipeline ({splits.info.augmentation}), batch {args.batch_size}, "
        f"{os.cpu_count()} CPUs, load average {result['load_average_1min']}"
    )
    print(f"  pipeline alone        {pipeline_ips:10.0f} images/s  ({result['pipeline_ms_per_batch']:.2f} ms/batch)")
    print(
        f"  training consumes     {train_ips:10.0f} images/s  ({result['step_ms']:.2f} ms/step, {result['step_source']})"
    )
    if "fed_step_ms" in result:
        print(
            f"  step fed by pipeline  {result['fed_step_ms']:10.2f} ms      "
            f"({result['input_overhead_ms']:+.2f} ms against the in-memory batch)"
        )
        if result["input_overhead_ms"] < 0:
            print("  (a negative difference is run-to-run noise: the input costs less than that spread)")
    verdict = "never bounds" if result["pipeline_over_train"] >= 1.0 else "BOUNDS"
    print(f"  pipeline / training = {result['pipeline_over_train']:.2f}x: input {verdict} training")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
