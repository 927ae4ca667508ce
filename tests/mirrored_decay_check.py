"""Run by test_distribution.py in a fresh process: weight decay alone (a zero data gradient) under
MirroredStrategy on 2 logical CPU devices vs one device. Prints the trained variables of both as JSON."""

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

LR, MOMENTUM, DECAY, STEPS = 0.1, 0.9, 0.05, 3


def trained(strategy, objective):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        inputs = keras.Input((8, 8, 1))
        h = ReparamConv2D(4, 3, 2, parameterization="hadamard", name="c")(inputs)
        h = keras.layers.BatchNormalization(name="bn")(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.Flatten()(h)
        h = ReparamDense(10, name="d")(h)
        # Logits times zero: the data term has an exactly zero gradient, only weight decay moves the weights.
        net = keras.Model(inputs, keras.layers.Rescaling(0.0, name="zero")(h))
        model = RobustModel(net, objective=objective, epsilon=0.05, weight_decay=DECAY, ensemble=False)
        model.compile(optimizer=keras.optimizers.SGD(LR, momentum=MOMENTUM))
    initial = {v.path: np.asarray(v).tolist() for v in model.trainable_variables}
    rng = np.random.default_rng(0)
    x = rng.random((16 * STEPS, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 16 * STEPS).astype("int32")
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=1, verbose=0)
    final = {v.path: np.asarray(v).tolist() for v in model.trainable_variables}
    return initial, final


result = {}
for objective in sys.argv[1:]:
    initial, one = trained(tf.distribute.OneDeviceStrategy("/cpu:0"), objective)
    _, two = trained(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), objective)
    result[objective] = {"initial": initial, "one": one, "mirrored": two}
print(json.dumps({"lr": LR, "momentum": MOMENTUM, "decay": DECAY, "steps": STEPS, "runs": result}))
