"""Keeps TensorFlow quiet and makes the repo root importable for the tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One TensorFlow thread per op, in this process and every main.py the tests start: the suite runs as two
# pytest-xdist workers on two cores (.ci/run), and the tiny models of the tests run faster on one thread
# than split over two (a digits run: 14.3 s -> 10.3 s). Inter-op threads stay at TensorFlow's default
# (collectives of the multi-device tests wait on them). The golden runs fix both (tests/golden/record.py).
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
