"""FReP's implicit sparsity (paper III-B, Fig. 7): dense hadamard training on digits ends with a far
sparser fused-weight distribution than the same training of plain weights."""

import keras
import numpy as np

from frep_tf import data
from frep_tf.models import build_model
from frep_tf.training.robust_model import RobustModel


def near_zero_fraction(net):
    """Share of fused kernel entries below 1e-3 of the largest |w| in the network."""
    kernels = [np.asarray(layer.fused_kernel()) for layer in net.layers if hasattr(layer, "fused_kernel")]
    peak = max(float(np.abs(k).max()) for k in kernels)
    return sum(int(np.sum(np.abs(k) < 1e-3 * peak)) for k in kernels) / sum(k.size for k in kernels)


def train_dense(parameterization):
    keras.utils.set_random_seed(0)
    splits = data.load_dataset("digits", batch_size=32, val_size=0, seed=0)
    net = build_model("small_cnn", input_shape=splits.info.image_shape, parameterization=parameterization, width=0.5)
    at_init = near_zero_fraction(net)
    model = RobustModel(net, objective="sre", epsilon=0.1, weight_decay=2e-4, ensemble=False)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    history = model.fit(splits.train, epochs=8, verbose=0, shuffle=False)  # the pipeline shuffles
    return at_init, near_zero_fraction(net), history.history["clean_acc"][-1]


def test_hadamard_training_is_at_least_ten_times_sparser_than_plain():
    h_init, hadamard, h_acc = train_dense("hadamard")
    _, plain, p_acc = train_dense("plain")
    assert h_acc > 0.7 and p_acc > 0.7  # both really trained
    assert hadamard >= 10 * max(plain, 1e-4), (hadamard, plain)
    assert hadamard > h_init  # training made it sparser than the product initialisation already was
