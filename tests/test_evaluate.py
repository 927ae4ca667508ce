"""The robustness report: results and sanity checks on natural, gradient-masked, randomized and
TFLite models, the Table I row, and transfer from the float model to its TFLite export."""

import numpy as np
import pytest
import tensorflow as tf

from frep_tf import evaluation
from frep_tf.attacks import autoattack, checks, common, pgd

EPS = 0.1
FAST = dict(
    pgd_steps=10,
    mim_steps=10,
    square_queries=100,
    sweep_samples=48,
    sweep_steps=10,
    autoattack_settings=autoattack.Settings(
        apgd_steps=10, apgd_target_classes=2, fab_steps=10, fab_target_classes=2, square_queries=100
    ),
    batch_size=64,
    progress=False,
)


@pytest.fixture(scope="module")
def cnn(train_digits_cnn):
    return train_digits_cnn(filters=(8, 16), dropout=0.2, epochs=6)


def _tflite(model, path, representative=None):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:  # full integer: int8 input and output tensors
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([representative[i : i + 1]] for i in range(64))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    path.write_bytes(converter.convert())
    return str(path)


@tf.custom_gradient
def _quantize_without_gradient(x):
    return tf.round(x * 8.0) / 8.0, lambda dy: tf.zeros_like(dy)


def test_report_of_a_natural_model(cnn, digits):
    x, y = digits[1][:96], digits[3][:96]
    attacks = ["clean", "fgsm", "pgd", "mim", "square", "autoattack"]
    results = evaluation.evaluate_model(lambda v: cnn(v, training=False), x, y, epsilon=EPS, attacks=attacks, **FAST)
    for name in [*attacks, "worst_case"]:
        assert results[name]["samples"] == 96 and results[name]["seconds"] >= 0
        assert 0.0 <= results[name]["accuracy"] <= 1.0
    acc = {k: results[k]["accuracy"] for k in attacks}
    assert acc["clean"] > 0.9 and acc["pgd"] < acc["clean"] - 0.3
    # AutoAttack is the worst case over its attacks and leaves no more robust than the others.
    assert acc["autoattack"] == results["autoattack"]["after"]["square"]
    assert all(acc["autoattack"] <= a for a in acc.values())
    assert results["worst_case"]["accuracy"] <= min(acc.values())
    sanity = results["sanity"]
    assert sanity["passed"], sanity
    assert sanity["checks"]["eps_sweep"]["accuracy"][-1] == 0.0
    assert results["config"]["pgd_step_size"] == pytest.approx(EPS / 4)

    table = evaluation.markdown_table(results, name="digits cnn").splitlines()
    assert table[0] == "| Model | Clean | FGSM | PGD | MIM | Square | AA |"
    assert table[2] == "| digits cnn | " + " | ".join(f"{100 * acc[k]:.1f}" for k in attacks) + " |"
    assert table[-1] == "Sanity checks: all passed."


def test_report_flags_a_gradient_masked_model(cnn, digits):
    x, y = digits[1][:96], digits[3][:96]

    def masked(v):
        return cnn(_quantize_without_gradient(v), training=False)

    results = evaluation.evaluate_model(masked, x, y, epsilon=EPS, attacks=["clean", "pgd", "square"], **FAST)
    assert results["square"]["accuracy"] < results["pgd"]["accuracy"] - 0.1
    found = results["sanity"]["checks"]
    assert not results["sanity"]["passed"]
    for name in ("black_box", "zero_gradients", "eps_sweep"):
        assert found[name]["passed"] is False, name
    table = evaluation.markdown_table(results).splitlines()
    acc = {k: f"{100 * results[k]['accuracy']:.1f}" for k in ("clean", "pgd", "square")}
    assert table[2] == f"| model | {acc['clean']} | - | {acc['pgd']} | - | {acc['square']} | - |"
    assert any(line.startswith("- sanity check failed, black_box: black box beats white box") for line in table)


def test_points_only_square_found_are_explained(cnn, digits):
    """Square finding points the white-box stages missed fails the check either way; APGD with
    restarts then tells masked gradients (it cannot break them) from a short budget (it can)."""
    x, y = digits[1][:96], digits[3][:96]

    def masked(v):
        return cnn(_quantize_without_gradient(v), training=False)

    results = evaluation.evaluate_model(masked, x, y, epsilon=EPS, attacks=["clean", "autoattack"], **FAST)
    check = results["sanity"]["checks"]["square_in_autoattack"]
    assert check["passed"] is False and check["square_found"] >= 2, check
    assert check["white_box_with_restarts_broke"] < check["square_found"]
    assert "gradients are masked there" in check["message"]

    # On the natural model, points a gradient attack can break stand in for Square's finds.
    natural = lambda v: cnn(v, training=False)  # noqa: E731
    breakable = np.argmax(natural(pgd.pgd(natural, x, y, eps=EPS, steps=20, step_size=EPS / 4)), -1) != y
    assert breakable.sum() >= 10
    failed = {"passed": False, "message": "Square lowered AutoAttack's robust accuracy"}
    check = checks.explain_square_finds(failed, natural, x[breakable], y[breakable], eps=EPS, steps=20)
    assert check["passed"] is False
    assert check["white_box_with_restarts_broke"] == check["square_found"] == breakable.sum()
    assert "the gradients are informative there" in check["message"]


def test_randomized_model_and_probability_outputs_are_flagged(cnn, digits):
    x = digits[1][:32]
    assert checks.check_deterministic(lambda v: cnn(v, training=True), x)["passed"] is False
    assert checks.check_deterministic(lambda v: cnn(v, training=False), x)["passed"] is True
    probabilities = checks.check_logits(lambda v: tf.nn.softmax(cnn(v, training=False)), x)
    assert probabilities["passed"] is False


def test_checks_on_given_accuracies():
    assert checks.check_order({"clean": 0.9, "fgsm": 0.5, "pgd": 0.4, "autoattack": 0.38})["passed"]
    assert not checks.check_order({"clean": 0.9, "fgsm": 0.3, "pgd": 0.4})["passed"]
    assert checks.check_order({"clean": 0.9})["passed"] is None
    assert checks.check_eps_sweep([0.1, 0.2, 0.4], [0.5, 0.2, 0.01])["passed"]
    assert not checks.check_eps_sweep([0.1, 0.2, 0.4], [0.5, 0.6, 0.01])["passed"]  # rises
    assert not checks.check_eps_sweep([0.1, 0.2, 0.4], [0.5, 0.4, 0.3])["passed"]  # stays up
    # One point out of 1000 is noise, twenty are not.
    assert checks.check_black_box({"pgd": 0.5, "square": 0.499}, samples=1000)["passed"]
    assert not checks.check_black_box({"pgd": 0.5, "square": 0.48}, samples=1000)["passed"]
    assert checks.check_perturbation({"pgd": 0.1 + 1e-3}, 0.1)["passed"] is False
    after = {"clean": 0.9, "apgd-ce": 0.5, "apgd-t": 0.45, "fab-t": 0.45, "square": 0.40}
    assert not checks.check_square_in_autoattack(after, samples=100)["passed"]
    assert checks.check_square_in_autoattack({**after, "square": 0.45}, samples=100)["passed"]


class _BranchingModel:
    def __init__(self, model):
        self.model = model

    def __call__(self, v):
        if tf.reduce_max(v) > 2.0:  # Python control flow on a tensor: needs autograph in graphs
            v = v / 2.0
        return self.model(v, training=False)


def test_model_code_that_needs_autograph_still_compiles(cnn, digits):
    x, y = digits[1][:16], digits[3][:16]
    results = evaluation.evaluate_model(
        _BranchingModel(cnn), x, y, epsilon=EPS, attacks="clean,fgsm", sanity=False, progress=False
    )
    assert results["fgsm"]["accuracy"] < results["clean"]["accuracy"]


def test_bad_arguments_fail_clearly(cnn, digits):
    x, y = digits[1][:4], digits[3][:4]
    with pytest.raises(ValueError, match="attacks must be among"):
        evaluation.evaluate_model(cnn, x, y, epsilon=EPS, attacks=["clean", "cw"])
    with pytest.raises(ValueError, match="equal length"):
        evaluation.evaluate_model(cnn, x, y[:3], epsilon=EPS)


def test_tflite_model_square_and_transfer(cnn, digits, tmp_path):
    x, y = digits[1][:64], digits[3][:64]
    tflite = evaluation.tflite_model_fn(_tflite(cnn, tmp_path / "m.tflite"))
    np.testing.assert_allclose(np.asarray(tflite(x)), cnn(x, training=False), atol=1e-4)
    assert np.asarray(tflite(x[:5])).shape == (5, 10)  # the batch is resized per call

    with pytest.raises(common.NotDifferentiableError, match="transfer_accuracy"):
        evaluation.evaluate_model(tflite, x, y, epsilon=EPS, attacks=["clean", "pgd"])
    results = evaluation.evaluate_model(tflite, x, y, epsilon=EPS, attacks=["clean", "square"], **FAST)
    keras_results = evaluation.evaluate_model(
        lambda v: cnn(v, training=False), x, y, epsilon=EPS, attacks=["clean", "square"], **FAST
    )
    # Same weights, same seeds: the interpreter must behave like the Keras model.
    assert abs(results["square"]["accuracy"] - keras_results["square"]["accuracy"]) <= 1 / 64
    assert results["square"]["accuracy"] < results["clean"]["accuracy"] - 0.1
    assert results["sanity"]["checks"]["zero_gradients"]["passed"] is None

    transfer = evaluation.transfer_accuracy(
        lambda v: cnn(v, training=False), tflite, x, y, epsilon=EPS, steps=10, progress=False
    )
    assert transfer["samples"] == 64
    assert abs(transfer["accuracy"] - transfer["source_accuracy"]) <= 1 / 64
    assert transfer["accuracy"] < transfer["clean_accuracy"] - 0.3


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
def test_int8_tflite_model_is_dequantized(cnn, digits, tmp_path):
    x = digits[1][:64]
    tflite = evaluation.tflite_model_fn(_tflite(cnn, tmp_path / "q.tflite", representative=x))
    logits, reference = np.asarray(tflite(x)), np.asarray(cnn(x, training=False))
    assert logits.dtype == np.float32
    assert np.mean(np.argmax(logits, -1) == np.argmax(reference, -1)) > 0.9
    assert np.abs(logits - reference).mean() < 0.1 * np.abs(reference).mean()


def test_every_attack_has_its_own_fixed_random_stream():
    from frep_tf.config import EVAL_ATTACKS
    from frep_tf.evaluation import robustness

    assert set(robustness.STREAMS) == set(EVAL_ATTACKS)
    assert len(set(robustness.STREAMS.values())) == len(robustness.STREAMS)
