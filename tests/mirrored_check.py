"""Run by test_distribution.py in a fresh process: RobustModel.fit on 1 device vs MirroredStrategy on 2
logical CPU devices. Prints the per-epoch losses of both as JSON."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from frep_tf.layers import ReparamConv2D, ReparamDense  # noqa: E402
from frep_tf.training.robust_model import RobustModel  # noqa: E402


def losses(strategy, objective, lr=0.2):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        # No BatchNorm: per-replica batch statistics would differ from one device's by design.
        inputs = keras.Input((8, 8, 1))
        h = ReparamConv2D(4, 3, 2, parameterization="hadamard", name="c")(inputs)
        h = keras.layers.ReLU()(h)
        h = keras.layers.Flatten()(h)
        net = keras.Model(inputs, ReparamDense(10, name="d")(h))
        # epsilon > 0 exercises the perturbation path; with a zero-width noise range it is deterministic.
        model = RobustModel(net, objective=objective, epsilon=0.05, weight_decay=1e-3, ensemble=False)
        model._uniform_start = lambda x: x  # same start on every replica and on one device
        model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9))
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 64).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = model.fit(ds, epochs=4, verbose=0)
    return history.history["loss"]


result = {}
for objective in sys.argv[1:]:
    one = losses(tf.distribute.OneDeviceStrategy("/cpu:0"), objective)
    two = losses(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), objective)
    # Control: what summing (instead of averaging) the replicas' losses would look like.
    doubled = losses(tf.distribute.OneDeviceStrategy("/cpu:0"), objective, lr=0.4)
    result[objective] = {"one": one, "mirrored": two, "one_doubled_lr": doubled}
print(json.dumps(result))
