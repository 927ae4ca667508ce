"""From a source of raw examples to batched, shuffled, augmented `tf.data` pipelines.

Order of the training pipeline and why:
  carve validation -> cache (stored dtype, if it fits) -> shuffle -> batch -> augment + to float
  (parallel) -> prefetch.
Batching before augmenting lets the crop and flip run as a few vectorised ops per batch; caching
before the float conversion keeps uint8 images, a quarter of the memory.

Reproducibility: the validation carve-out depends only on `SPLIT_SEED` (not on the run's seed), so
runs with different seeds are compared on the same validation examples. The shuffle and the
augmentation are seeded by `seed`; augmentation seeds come from a seeded `Dataset.random` that
draws new values every epoch. With `deterministic=True` the whole pipeline is reproducible element
for element; with False, parallel batch maps may hand out finished batches out of order (faster when
batches take uneven time), but each batch's content and augmentation stay the same. The upstream
(source) part always keeps its order, because the carve-out selects examples by position.
`Splits.train_from(epoch)`, the endless stream the trainer uses, gives every epoch the same batches
whichever epoch it starts from, so a resumed run trains on what an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np

from frep_tf.data import augment as augment_lib
from frep_tf.data.errors import DatasetError
from frep_tf.data.source import ArraySource, StreamSource
from frep_tf.data.splits import DatasetInfo, Splits

SPLIT_SEED = 0
CACHE_LIMIT_BYTES = 2 * 2**30  # per split; tfds data above it is decoded again every epoch
SHUFFLE_BUFFER_BYTES = 512 * 2**20
MIN_SHUFFLE_BUFFER = 1024


def resolve_val_count(val_size: float, num_train: int) -> int:
    """Number of training examples carved out for validation from `val_size` (fraction or count)."""
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.integer, np.floating)):
        raise DatasetError(f"--val_size must be a fraction in (0, 1) or a count >= 0; received: {val_size!r}")
    if isinstance(val_size, (int, np.integer)):
        count = int(val_size)
        if count < 0 or count >= num_train:
            raise DatasetError(
                f"--val_size={count}: a validation count must lie in [0, {num_train - 1}] "
                f"(there are {num_train} training examples)"
            )
        return count
    fraction = float(val_size)
    if fraction == 0.0:
        return 0
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"--val_size={val_size}: a fraction must lie in (0, 1); use 0 for no validation split")
    count = round(fraction * num_train)
    if count == 0 or count == num_train:
        raise DatasetError(
            f"--val_size={val_size}: gives {count} validation examples out of {num_train}; "
            "choose a fraction or a count that leaves both splits non-empty"
        )
    return count


def validation_mask(num_train: int, num_val: int) -> np.ndarray:
    """Boolean mask over training positions: True for the examples carved out as validation."""
    mask = np.zeros(num_train, dtype=bool)
    mask[np.random.default_rng(SPLIT_SEED).permutation(num_train)[:num_val]] = True
    return mask


def build_splits(
    source: ArraySource | StreamSource,
    *,
    batch_size: int,
    eval_batch_size: int,
    val_size: float,
    seed: int,
    augment: bool,
    augmentation: str | None,
    image_size: tuple[int, int] | None,
    deterministic: bool,
    train_samples: int = 0,
) -> Splits:
    """Builds the train / val / test pipelines of `source`; see the module docstring.

    `train_samples` > 0 keeps a fixed random subset of that many training examples (chosen with
    SPLIT_SEED, so every run and seed sees the same subset) before the validation carve-out.
    """
    if train_samples:
        source = _subset(source, train_samples)

    policy = augmentation if augmentation is not None else source.augmentation
    augment_lib.check_policy(policy)
    if not augment:
        policy = "none"
    stored_shape = source.image_shape
    if image_size is not None and tuple(image_size) != stored_shape[:2]:
        target: tuple[int, int] | None = (int(image_size[0]), int(image_size[1]))
        image_shape = (*target, stored_shape[2])
    else:
        target = None
        image_shape = stored_shape

    num_val = resolve_val_count(val_size, source.num_train)
    num_train = source.num_train - num_val
    if num_train < batch_size:
        raise DatasetError(
            f"--batch_size={batch_size}: larger than the {num_train} training examples of "
            f"{source.name} left after the validation split; use a smaller batch or --val_size"
        )
    train_raw, val_raw, test_raw, example_bytes = _raw_splits(source, num_train, num_val)
    batches = _Batches(
        train_raw,
        num_train=num_train,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        policy=policy,
        target=target,
        deterministic=deterministic,
        example_bytes=example_bytes,
    )
    info = DatasetInfo(
        name=source.name,
        image_shape=tuple(int(d) for d in image_shape),
        num_classes=int(source.num_classes),
        num_train=num_train,
        num_val=num_val,
        num_test=source.num_test,
        augmentation=augment_lib.describe(policy, image_shape)
        + (" (augmentation turned off)" if not augment and source.augmentation != "none" else ""),
    )
    return Splits(
        train=batches.train(),
        val=batches.evaluation(val_raw) if num_val else None,
        test=batches.evaluation(test_raw),
        info=info,
        train_from=batches.train_from,
    )


def _raw_splits(source: ArraySource | StreamSource, num_train: int, num_val: int):
    """(train, val, test) datasets of single examples in their stored dtype, the validation examples
    carved out of the training set; and the bytes of one stored example."""
    import tensorflow as tf

    mask = validation_mask(source.num_train, num_val)
    if isinstance(source, ArraySource):
        train_raw = tf.data.Dataset.from_tensor_slices((source.x_train[~mask], source.y_train[~mask]))
        val_raw = tf.data.Dataset.from_tensor_slices((source.x_train[mask], source.y_train[mask]))
        test_raw = tf.data.Dataset.from_tensor_slices((source.x_test, source.y_test))
        return train_raw, val_raw, test_raw, source.x_train[:1].nbytes
    train_raw = _select(source.train, mask, keep=False, count=num_train)
    val_raw = _select(source.train, mask, keep=True, count=num_val)
    test_raw = source.test
    example_bytes = int(np.prod(source.image_shape)) * 1  # tfds images are uint8
    train_raw, val_raw, test_raw = (
        _maybe_cache(ds, n * example_bytes)
        for ds, n in (
            (train_raw, num_train),
            (val_raw, num_val),
            (test_raw, source.num_test),
        )
    )
    return train_raw, val_raw, test_raw, example_bytes


class _Batches:
    """From single examples to batches: the training split shuffled (as a function of seed and epoch) and
    augmented, every split resized and converted to float, each pipeline prefetched."""

    def __init__(
        self,
        train_raw,
        *,
        num_train: int,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        policy: str,
        target: tuple[int, int] | None,
        deterministic: bool,
        example_bytes: int,
    ):
        import tensorflow as tf

        self.train_raw, self.num_train, self.seed = train_raw, num_train, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.policy, self.target, self.deterministic = policy, target, deterministic
        # The source keeps its order whatever `deterministic` says; only our batch maps may relax it.
        self.options = tf.data.Options()
        self.options.deterministic = True
        # Plain tensor code: skipping autograph's conversion saves seconds of tracing per load.
        self.plain = tf.autograph.experimental.do_not_convert
        self.prepare = self.plain(self._prepare)
        self.buffer = max(MIN_SHUFFLE_BUFFER, SHUFFLE_BUFFER_BYTES // max(example_bytes, 1))
        self.steps_per_epoch = num_train // batch_size

    def _prepare(self, images, labels, seeds=None):
        import tensorflow as tf

        if self.target is not None:
            images = tf.image.resize(_to_float(images), self.target, antialias=True)
            images = tf.clip_by_value(images, 0.0, 1.0)
        if seeds is not None:
            images = augment_lib.augment_batch(images, seeds, self.policy)
        return _to_float(images), tf.cast(labels, tf.int32)

    def shuffled_batches(self):
        # A new dataset each call: a seeded reshuffling shuffle draws its per-epoch orders from a
        # generator that belongs to the dataset object, so two streams sharing one would interfere.
        shuffled = self.train_raw.shuffle(
            min(self.num_train, self.buffer), seed=self.seed, reshuffle_each_iteration=True
        )
        return shuffled.batch(self.batch_size, drop_remainder=True)

    def finish(self, batches, seeds):
        import tensorflow as tf

        autotune = tf.data.AUTOTUNE
        if self.policy == "none":
            batches = batches.map(self.prepare, num_parallel_calls=autotune, deterministic=self.deterministic)
        else:
            batches = tf.data.Dataset.zip(batches, seeds).map(
                self.plain(lambda batch, batch_seeds: self.prepare(*batch, batch_seeds)),
                num_parallel_calls=autotune,
                deterministic=self.deterministic,
            )
        return batches.prefetch(autotune).with_options(self.options)

    def train(self):
        """One pass per iteration; a fresh pair of seeds per batch, different every epoch, same for every
        run with `seed`."""
        import tensorflow as tf

        batches = self.shuffled_batches()
        return self.finish(batches, tf.data.Dataset.random(seed=self.seed, rerandomize_each_iteration=True).batch(2))

    def train_from(self, epoch: int):
        # Epoch e's order is the e-th of the seeded shuffle's sequence, in every process: skipping
        # the batches of the epochs before `epoch` regenerates those orders (only shuffling and
        # batching, no augmentation or float conversion) so a resumed run sees the uninterrupted
        # run's batches. Augmentation seeds are a function of the batch's index since epoch 0.
        import tensorflow as tf

        first = epoch * self.steps_per_epoch
        batches = self.shuffled_batches().repeat().skip(first)
        seeds = tf.data.Dataset.counter(first).map(
            self.plain(lambda i: tf.stack([tf.constant(self.seed, tf.int64), i]))
        )
        return self.finish(batches, seeds)

    def evaluation(self, ds):
        import tensorflow as tf

        autotune = tf.data.AUTOTUNE
        ds = ds.batch(self.eval_batch_size).map(self.prepare, num_parallel_calls=autotune)
        return ds.prefetch(autotune).with_options(self.options)


def subset_mask(num_train: int, count: int) -> np.ndarray:
    """Boolean mask over training positions: the `count` examples kept by --train_samples."""
    mask = np.zeros(num_train, dtype=bool)
    mask[np.random.default_rng(SPLIT_SEED + 1).permutation(num_train)[:count]] = True
    return mask


def _subset(source, count: int):
    import dataclasses

    if not 0 < count <= source.num_train:
        raise DatasetError(
            f"--train_samples={count}: must lie in [1, {source.num_train}] ({source.name} has "
            f"{source.num_train} training examples; 0 = all)"
        )
    if count == source.num_train:
        return source
    mask = subset_mask(source.num_train, count)
    if isinstance(source, ArraySource):
        return dataclasses.replace(source, x_train=source.x_train[mask], y_train=source.y_train[mask])
    return dataclasses.replace(source, train=_select(source.train, mask, keep=True, count=count), num_train=count)


def _to_float(images):
    import tensorflow as tf

    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    return tf.cast(images, tf.float32)


def _select(ds, mask: np.ndarray, *, keep: bool, count: int):
    """The examples of `ds` whose position has mask == keep, with their cardinality declared."""
    import tensorflow as tf

    flags = tf.constant(mask if keep else ~mask)
    plain = tf.autograph.experimental.do_not_convert
    ds = ds.enumerate().filter(plain(lambda i, example: tf.gather(flags, i)))
    ds = ds.map(plain(lambda i, example: example))
    return ds.apply(tf.data.experimental.assert_cardinality(count))


def _maybe_cache(ds, nbytes: int):
    return ds.cache() if nbytes <= CACHE_LIMIT_BYTES else ds
