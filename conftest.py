"""Keeps TensorFlow quiet and makes the repo root importable for the tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
