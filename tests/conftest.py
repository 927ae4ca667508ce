"""Fixtures shared by the attack, evaluation and independent-implementation tests."""

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits in [0, 1], split like frep_tf's `digits` dataset: x_train, x_test, y_train, y_test."""
    data = load_digits()
    images = (data.images / 16.0).astype("float32")[..., None]
    labels = data.target.astype("int32")
    split = train_test_split(images, labels, test_size=0.2, random_state=0, stratify=labels)
    assert split[1].shape == (360, 8, 8, 1)
    return split


@pytest.fixture(scope="session")
def natural_cnn(digits):
    """A naturally trained two-layer CNN (clean test accuracy > 90 %) as a model callable."""
    x_train, x_test, y_train, y_test = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=5, batch_size=64, verbose=0)

    def model_fn(x):
        return model(x, training=False)

    model_fn.keras_model = model
    assert np.mean(np.argmax(model_fn(x_test), -1) == y_test) > 0.9
    return model_fn
