"""weight_stats: the histogram of log10|w| of a fused model's kernels (paper Fig. 7), on known weights."""

import keras
import numpy as np

from frep_tf.weight_stats import LOG10_START, histogram_of, log10_edges, weight_histogram


def test_edges_are_fixed_tenths_of_a_decade():
    edges = log10_edges()
    assert edges[0] == -8.0 and edges[-1] == 1.0 and len(edges) == 91
    np.testing.assert_allclose(np.diff(edges), 0.1, atol=1e-9)


def test_known_weights_land_in_their_bins():
    # 0.5 -> log10 -0.301 (bin [-0.4, -0.3)); -0.002 -> -2.699; 1e-9 below the bins; 20 above them.
    h = histogram_of([np.array([0.5, -0.002, 0.0, 0.0, 1e-9]), np.array([[20.0, 0.5]])])
    assert (h["zeros"], h["below"], h["above"], h["total"]) == (2, 1, 1, 7)
    counts = np.asarray(h["counts"])
    assert counts.sum() == 3
    assert counts[int(round((-0.4 - LOG10_START) / 0.1))] == 2
    assert counts[int(round((-2.7 - LOG10_START) / 0.1))] == 1


def test_a_model_counts_only_conv_and_dense_kernels():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    conv, dense = model.layers[0], model.layers[3]
    kernel = conv.kernel.numpy()
    kernel.flat[:10] = 0
    conv.kernel.assign(kernel)
    h = weight_histogram(model)
    assert h["total"] == conv.kernel.numpy().size + dense.kernel.numpy().size  # no biases, no BatchNorm
    assert h["zeros"] == 10
    weights = np.concatenate([conv.kernel.numpy().ravel(), dense.kernel.numpy().ravel()])
    expected, _ = np.histogram(np.log10(np.abs(weights[weights != 0])), bins=log10_edges())
    assert h["counts"] == expected.tolist() and sum(h["counts"]) == h["total"] - 10
