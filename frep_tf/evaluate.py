"""Kept importable for existing code: the evaluation lives in the `frep_tf.evaluation` package."""

from frep_tf.evaluation import *  # noqa: F403
from frep_tf.evaluation import __all__  # noqa: F401
