"""The catastrophic-overfitting guard: it flags an epoch whose validation PGD accuracy collapsed while the
training adversarial accuracy rose (a warning line, a TensorBoard scalar, results.json), and stays quiet on
epoch-to-epoch noise, on a drop the training accuracy shares (a prune), and on a small drop from a low
level. Each of its three conditions has a sequence here that only that condition keeps quiet."""

import keras
import numpy as np
import pytest

from frep_tf import results
from frep_tf.experiments.tb_events import read_scalars
from frep_tf.training import overfitting
from frep_tf.training.monitor import EpochMonitor
from frep_tf.training.robust_model import RobustModel


def _history(values):
    return {epoch: float(v) for epoch, v in enumerate(values)}


def _flagged(val_pgd, adv_acc):
    return [c.epoch for c in overfitting.collapses(_history(val_pgd), _history(adv_acc))]


RISING = [0.30, 0.35, 0.40, 0.42, 0.45, 0.47]
QUIET = {
    # Epoch-to-epoch noise of a few points.
    "noise": ([0.30, 0.34, 0.29, 0.36, 0.31, 0.38], RISING),
    # 15 points lost from 60 %: large in points, a quarter of the robustness (the relative condition).
    "high_level_dip": ([0.55, 0.60, 0.45, 0.50, 0.52, 0.55], RISING),
    # Robustness more than halved, but only 7 points of it (the absolute floor).
    "low_level_dip": ([0.08, 0.12, 0.05, 0.09, 0.11, 0.12], RISING),
    # Robustness and training accuracy fall together, as after a one-shot prune (training accuracy must rise).
    "prune": ([0.38, 0.40, 0.10, 0.25, 0.33, 0.36], [0.40, 0.50, 0.30, 0.38, 0.42, 0.45]),
}


@pytest.mark.parametrize("name", sorted(QUIET))
def test_the_guard_is_quiet_on_noise_and_explained_drops(name):
    assert _flagged(*QUIET[name]) == []


def test_the_guard_flags_a_collapse_at_its_epoch():
    val_pgd = [0.20, 0.33, 0.41, 0.42, 0.03, 0.01, 0.00]
    adv_acc = [0.25, 0.38, 0.46, 0.48, 0.72, 0.85, 0.90]
    (collapse,) = overfitting.collapses(_history(val_pgd), _history(adv_acc))
    # Epoch 5 (1-based), from 42 % (epoch 4, the best) to 3 %; epochs 6 and 7 stay collapsed: one flag.
    assert collapse == overfitting.Collapse(5, 0.42, 0.03, 0.48, 0.72, best_epoch=4)
    record = overfitting.collapse_record(_history(val_pgd), _history(adv_acc))
    assert record == {
        "epoch": 5,
        "val_pgd_before": 0.42,
        "val_pgd_after": 0.03,
        "adv_acc_before": 0.48,
        "adv_acc_after": 0.72,
        "best_epoch": 4,
        "flagged_epochs": [5],
    }
    assert overfitting.collapse_record(*map(_history, QUIET["noise"])) is None
    message = collapse.message()
    assert "\n" not in message and "epoch 5" in message and "42.0 % (epoch 4, the best so far) to 3.0 %" in message


def test_the_guard_flags_a_collapse_spread_over_several_epochs():
    # Measured on the proving ground (configs/fashion_mlp.cfg, dense, --objective=fgsm --epsilon=0.2
    # --step_size=0.4, seed 0): robustness falls from 29.8 % to 10 % over ten epochs, never more than 6.5
    # points from one epoch to the next, while the accuracy on the training perturbation climbs to 77 %.
    val_pgd = [0.254, 0.298, 0.224, 0.159, 0.161, 0.153, 0.136, 0.137, 0.191, 0.119, 0.101, 0.088, 0.101]
    adv_acc = [0.289, 0.397, 0.537, 0.614, 0.647, 0.671, 0.673, 0.678, 0.678, 0.679, 0.746, 0.764, 0.768]
    found = overfitting.collapses(_history(val_pgd), _history(adv_acc))
    # Epoch 7 is the first below half of epoch 2's 29.8 %; epoch 9 recovers above it, epoch 10 falls again.
    assert [(c.epoch, c.best_epoch) for c in found] == [(7, 2), (10, 2)]
    assert found[0].val_pgd_before == 0.298 and found[0].adv_acc_before == 0.397


def test_the_epoch_by_epoch_guard_agrees_with_the_rule_over_a_history():
    cases = [
        *QUIET.values(),
        ([0.4, 0.42, 0.03, 0.3, 0.02], [0.4, 0.45, 0.7, 0.5, 0.8]),
        ([0.3, 0.25, 0.2, 0.14, 0.13, 0.2, 0.1], [0.3, 0.4, 0.5, 0.6, 0.7, 0.7, 0.8]),
    ]
    for val_pgd, adv_acc in cases:
        guard = overfitting.CatastrophicOverfittingGuard()
        live = [guard.update(e, v, a) for e, (v, a) in enumerate(zip(val_pgd, adv_acc, strict=True))]
        assert [c.epoch for c in live if c] == _flagged(val_pgd, adv_acc)


# -- the monitor: warning, TensorBoard, results.json, across a resume ---------------------------------------
def _tiny_model():
    keras.utils.set_random_seed(0)
    from frep_tf.models import build_model

    net = build_model("small_cnn", input_shape=(8, 8, 1), width=0.25)
    model = RobustModel(net, objective="fgsm", epsilon=0.1, ensemble=False)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    return model


def _scripted_monitor(model, log_dir, robust: list, epochs: int = 10):
    """An EpochMonitor whose validation PGD accuracy is `robust` epoch after epoch (the attack is not run)."""
    rng = np.random.default_rng(0)
    monitor = EpochMonitor(
        rng.random((4, 8, 8, 1)).astype("float32"), np.arange(4) % 10, epsilon=0.1, pgd_steps=1, log_dir=log_dir
    )
    monitor.set_model(model)
    monitor.set_params({"epochs": epochs})
    script = iter(robust)
    monitor._measure = lambda net: (0.9, next(script), np.full((4, 10), 0.1))
    return monitor


def test_the_monitor_warns_once_writes_tensorboard_and_results_find_it_after_a_resume(tmp_path, capsys):
    workdir = tmp_path / "run"
    log_dir = str(workdir / results.MONITOR_LOG_DIR)
    model = _tiny_model()
    val_pgd, adv_acc = [0.40, 0.42, 0.05, 0.04], [0.40, 0.45, 0.70, 0.75]
    # One process runs epochs 1-2 and is killed; the next (a fresh monitor) runs epochs 3-4: the collapse in
    # epoch 3 is measured against epoch 2, which only the TensorBoard record of the first process holds.
    first = _scripted_monitor(model, log_dir, val_pgd[:2])
    for epoch in (0, 1):
        logs = {"adv_acc": adv_acc[epoch], "loss": 1.0}
        first.on_epoch_end(epoch, logs)
        assert set(logs).isdisjoint({overfitting.ADV_ACC_TAG, overfitting.FLAG_TAG})  # not in the epoch logs
    first.on_train_end()
    assert capsys.readouterr().err == ""
    second = _scripted_monitor(model, log_dir, val_pgd[2:])
    for epoch in (2, 3):
        second.on_epoch_end(epoch, {"adv_acc": adv_acc[epoch]})
    second.on_train_end()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("[frep_tf] warning: catastrophic overfitting?")
    assert "after epoch 3" in warnings[0]
    assert [c.epoch for c in second.collapses] == [3]
    scalars = read_scalars(log_dir)
    assert scalars[overfitting.FLAG_TAG] == {0: 0.0, 1: 0.0, 2: 1.0, 3: 0.0}
    assert scalars[overfitting.ADV_ACC_TAG] == pytest.approx(_history(adv_acc))
    record = results.catastrophic_overfitting(str(workdir))
    assert record["epoch"] == 3 and record["flagged_epochs"] == [3]
    assert (record["val_pgd_before"], record["val_pgd_after"]) == pytest.approx((0.42, 0.05))
    assert results.catastrophic_overfitting(str(tmp_path / "no_run")) is None


def test_a_real_fit_records_the_guard_in_tensorboard_only(tmp_path):
    model = _tiny_model()
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 64).astype("int32")
    log_dir = str(tmp_path / "tb" / "frep")
    monitor = EpochMonitor(x[:16], y[:16], epsilon=0.1, pgd_steps=1, log_dir=log_dir)
    history = model.fit(x, y, batch_size=32, epochs=2, callbacks=[monitor], verbose=0)
    assert "val_pgd_acc" in history.history and overfitting.FLAG_TAG not in history.history
    scalars = read_scalars(log_dir)
    assert sorted(scalars[overfitting.FLAG_TAG]) == [0, 1]
    assert scalars[overfitting.ADV_ACC_TAG] == pytest.approx(dict(enumerate(history.history["adv_acc"])))


def test_the_summary_table_names_a_flagged_epoch():
    record = overfitting.collapse_record(_history([0.4, 0.42, 0.03]), _history([0.4, 0.45, 0.7]))
    run = {
        "evaluation": {"clean": {"accuracy": 0.5, "samples": 10}, "config": {"epsilon": 0.1}},
        "dataset": {"name": "digits"},
        "timings": {"total": 1.0},
    }
    assert "catastrophic" not in results.summary_table(run)
    table = results.summary_table(run | {"catastrophic_overfitting": record})
    assert "catastrophic overfitting? flagged after epoch 3: validation PGD accuracy 42.0 % -> 3.0 %" in table
