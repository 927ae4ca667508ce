"""Robustness evaluation of any classifier (docs/evaluation.md), one concern per module:

- `robustness`: the attack driver, `evaluate_model` (clean, FGSM, PGD, MIM, Square, AutoAttack);
- `sanity`: the checks that say when a robust accuracy is not to be trusted, and the eps sweep;
- `transfer`: PGD crafted on a float model and evaluated on others (TFLite files have no gradients);
- `table`: a Markdown row shaped like the paper's Table I.

TFLite files run through `frep_tf.tflite.TFLiteModel`, the one LiteRT wrapper.
"""

from frep_tf.evaluation.robustness import ALIASES, ATTACKS, GRADIENT_FREE, evaluate_model
from frep_tf.evaluation.sanity import SWEEP_MAX_EPS, eps_sweep, run_sanity
from frep_tf.evaluation.table import TABLE_COLUMNS, markdown_table
from frep_tf.evaluation.transfer import transfer_accuracies, transfer_accuracy
from frep_tf.tflite import TFLiteModel, tflite_model_fn

__all__ = [
    "ALIASES",
    "ATTACKS",
    "GRADIENT_FREE",
    "SWEEP_MAX_EPS",
    "TABLE_COLUMNS",
    "TFLiteModel",
    "eps_sweep",
    "evaluate_model",
    "markdown_table",
    "run_sanity",
    "tflite_model_fn",
    "transfer_accuracies",
    "transfer_accuracy",
]
