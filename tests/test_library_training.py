"""Training a user's own model with the library (docs/library.md): frep_tf.callbacks in the user's `fit`,
next to their learning-rate schedule, TensorBoard and keras.callbacks.BackupAndRestore; export of the
temporal ensemble."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from sklearn.datasets import load_digits

import frep_tf

L = keras.layers


def _digits(n=256):
    data = load_digits()
    return (data.images[:n] / 16.0).astype("float32")[..., None], data.target[:n].astype("int32")


def _net():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
            L.BatchNormalization(name="bn1"),
            L.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv2"),
            L.Flatten(name="flat"),
            L.Dense(10, name="logits"),
        ]
    )


def _robust(objective="natural", lr=None):
    keras.utils.set_random_seed(0)
    robust = frep_tf.RobustModel(frep_tf.reparameterize(_net(), verbose=False), objective=objective, epsilon=0.1)
    lr = lr or keras.optimizers.schedules.PiecewiseConstantDecay([9], [0.05, 0.005])
    # No XLA: for these tiny models it compiles for longer than it runs.
    robust.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), jit_compile=False)
    return robust


def _callbacks():
    return frep_tf.callbacks(sparsity=0.8, prune_epoch=2, ensemble_interval=3, ensemble_warmup=2.0)


class _Interrupt(keras.callbacks.Callback):
    """A kill in the middle of an epoch, as far as Keras can tell."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self._epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self._epoch, batch) == self.at:
            raise RuntimeError("interrupted")


def _state(robust) -> list[np.ndarray]:
    parts = robust.network.weights + robust.ensemble.weights
    parts += [robust.ensemble_updates, robust.pruned, robust.optimizer.iterations]
    return [np.asarray(v) for v in parts]


@pytest.mark.parametrize("objective", ["natural", "sre"])
def test_backup_and_restore_resumes_to_the_uninterrupted_weights(tmp_path, objective):
    """Killed before the prune and again after it; each restart is a fresh model (a new process). With SRE
    the restored run must also draw the same perturbations: RobustModel saves its perturbation stream's
    state with its weights."""
    x, y = _digits()
    fit = dict(batch_size=32, epochs=4, shuffle=False, verbose=0)  # 8 steps per epoch; lr decays at step 10
    reference = _robust(objective)
    reference.fit(x, y, callbacks=_callbacks(), **fit)
    backup = str(tmp_path / "backup")
    for epoch, batch in ((1, 2), (3, 4)):
        robust = _robust(objective)
        with pytest.raises(RuntimeError, match="interrupted"):
            robust.fit(
                x,
                y,
                callbacks=[keras.callbacks.BackupAndRestore(backup), *_callbacks(), _Interrupt(epoch, batch)],
                **fit,
            )
        assert bool(robust.pruned.numpy()) == (epoch > 2)
    robust = _robust(objective)
    history = robust.fit(x, y, callbacks=[keras.callbacks.BackupAndRestore(backup), *_callbacks()], **fit)
    assert len(history.history["loss"]) == 1  # only the last epoch was left
    assert int(robust.optimizer.iterations.numpy()) == 32
    for got, want in zip(_state(robust), _state(reference), strict=True):
        np.testing.assert_array_equal(got, want)
    kernels = np.concatenate(
        [k.numpy().ravel() for k in (robust.ensemble.get_layer(n).kernel for n in ("conv1", "conv2", "logits"))]
    )
    assert np.mean(kernels == 0) == pytest.approx(0.8, abs=0.01)


def test_user_fit_prunes_ensembles_logs_to_tensorboard_and_exports(tmp_path):
    x, y = _digits(192)
    robust = _robust("sre", lr=keras.optimizers.schedules.PiecewiseConstantDecay([7], [0.05, 0.005]))
    log_dir = str(tmp_path / "tb")
    shared = _callbacks()
    history = robust.fit(
        x,
        y,
        batch_size=32,
        epochs=3,
        verbose=0,
        validation_data=(x[:64], y[:64]),
        callbacks=[*shared, keras.callbacks.TensorBoard(log_dir)],
    )
    assert history.history["sparsity"] == [0.0, 0.0, pytest.approx(0.8, abs=0.01)]
    # Exactly the budget of the global prune (frep_tf.training.pruning): k = round((1 - sparsity) * n)
    # weights kept of the n in the factored kernels, in the network's masks and the ensemble's kernels.
    n = sum(int(np.prod(layer.mask.shape)) for layer in robust.reparam)
    pruned = n - int(round((1 - 0.8) * n))
    assert (n, pruned) == (3784, 3027) and history.history["sparsity"][-1] == pruned / n
    assert sum(int(np.sum(layer.mask.numpy() == 0)) for layer in robust.reparam) == pruned
    assert sum(int(np.sum(robust.ensemble.get_layer(la.name).kernel.numpy() == 0)) for la in robust.reparam) == pruned
    # The learning rate drops after step 7 (boundary + 1): the ensemble interval grows x10 there.
    assert shared[0].decay_steps == (8,)
    # Steps 3 and 6, then 30 would be the next: the update at the end of the last epoch (the default,
    # ensemble_final_update=True) is the third, so the exported ensemble has seen the last epoch.
    assert history.history["ensemble_updates"] == [2.0, 2.0, 3.0]
    tags = {
        v.tag
        for f in glob.glob(os.path.join(log_dir, "train", "*"))
        for e in tf.compat.v1.train.summary_iterator(f)
        for v in e.summary.value
    }
    assert {"epoch_sparsity", "epoch_ensemble_updates", "epoch_adv_acc"} <= tags
    records = frep_tf.export(robust, str(tmp_path / "out"), formats=("keras", "tflite_sparse"))
    assert [r.format for r in records] == ["keras", "tflite_sparse"] and all(r.bytes > 0 for r in records)
    exported = keras.models.load_model(records[0].path)
    assert [type(layer).__name__ for layer in exported.layers] == [
        "Conv2D",
        "BatchNormalization",
        "Conv2D",
        "Flatten",
        "Dense",
    ]
    np.testing.assert_allclose(exported(x[:8]), robust.ensemble(x[:8]), atol=1e-5)
    assert exported.get_layer("conv1").get_config()["activation"] == "relu"
    assert sum(int(np.sum(exported.get_layer(la.name).kernel.numpy() == 0)) for la in robust.reparam) == pruned
    # The TFLite file, run by the LiteRT interpreter as a device would, gives the .keras file's logits.
    interpreter = Interpreter(model_path=records[1].path)
    (given,), (taken,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(given["index"], (len(x), *x.shape[1:]))
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], x)
    interpreter.invoke()
    logits = np.asarray(exported(x))
    assert np.ptp(logits, axis=0).max() > 0.1 * np.abs(logits).max()  # the logits depend on the images
    np.testing.assert_allclose(interpreter.get_tensor(taken["index"]), logits, atol=1e-5 * np.abs(logits).max())


def test_callbacks_say_what_is_wrong_with_the_model_they_run_on():
    x, y = _digits(64)
    plain = _net()
    plain.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(TypeError, match="work with frep_tf.RobustModel; fit was called on Sequential"):
        plain.fit(x, y, epochs=1, verbose=0, callbacks=frep_tf.callbacks(sparsity=0.5))
    no_ensemble = frep_tf.RobustModel(frep_tf.reparameterize(_net(), verbose=False), ensemble=False)
    no_ensemble.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"needs RobustModel\(..., ensemble=True\); or pass ensemble=False"):
        no_ensemble.fit(x, y, epochs=1, verbose=0, callbacks=frep_tf.callbacks())
    unknown_length = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).filter(lambda a, b: True)
    with pytest.raises(ValueError, match="pass steps_per_epoch= to frep_tf.callbacks"):
        no_ensemble.fit(unknown_length, epochs=1, verbose=0, callbacks=frep_tf.callbacks(sparsity=0.5, ensemble=False))


def test_validation_data_measures_robustness_each_epoch_and_warns_of_a_collapse(capsys):
    x, y = _digits(128)
    robust = _robust("fgsm")
    cbs = frep_tf.callbacks(ensemble_interval=3, validation_data=(x[:32], y[:32]), val_pgd_steps=2)
    monitor = cbs[-2]  # ensemble, monitor, sparsity log
    history = robust.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=cbs)
    # Attacked at the RobustModel's own epsilon, the network and its ensemble, every epoch.
    assert monitor.epsilon == robust.epsilon == pytest.approx(0.1) and monitor.step_size == pytest.approx(0.125)
    for key in ("val_clean_acc", "val_pgd_acc", "val_ensemble_pgd_acc"):
        assert len(history.history[key]) == 2 and all(0 <= v <= 1 for v in history.history[key])
    assert all(p <= c for p, c in zip(history.history["val_pgd_acc"], history.history["val_clean_acc"], strict=True))
    assert capsys.readouterr().err.count("catastrophic overfitting?") == 0
    # The same monitor on a collapse (its measurement scripted: robustness 40 % -> 5 % while the training
    # adversarial accuracy rises): one warning line.
    script = iter([0.40, 0.42, 0.05])
    monitor._measure = lambda net: (0.9, next(script) if net is robust.network else 0.5, np.full((32, 10), 0.1))
    monitor.guard = type(monitor.guard)()
    for epoch, adv in enumerate([0.40, 0.45, 0.70]):
        monitor.on_epoch_end(epoch, {"adv_acc": adv})
    warnings = [line for line in capsys.readouterr().err.splitlines() if "catastrophic overfitting?" in line]
    assert len(warnings) == 1 and "after epoch 3" in warnings[0]
