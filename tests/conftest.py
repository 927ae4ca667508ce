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
def train_digits_cnn(digits):
    """Trains a two-conv-layer digits CNN (seed 0): train_digits_cnn(filters, dropout, epochs) -> keras model."""

    def train(filters=(16, 32), dropout=0.0, epochs=5):
        x_train, _, y_train, _ = digits
        keras.utils.set_random_seed(0)
        layers = [keras.Input((8, 8, 1))]
        layers += [keras.layers.Conv2D(f, 3, padding="same", activation="relu") for f in filters]
        layers += [keras.layers.Flatten()] + ([keras.layers.Dropout(dropout)] if dropout else [])
        model = keras.Sequential([*layers, keras.layers.Dense(10)])
        model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
        return model

    return train


@pytest.fixture(scope="session")
def natural_cnn(digits, train_digits_cnn):
    """A naturally trained two-layer CNN (clean test accuracy > 90 %) as a model callable."""
    _, x_test, _, y_test = digits
    model = train_digits_cnn()

    def model_fn(x):
        return model(x, training=False)

    model_fn.keras_model = model
    assert np.mean(np.argmax(model_fn(x_test), -1) == y_test) > 0.9
    return model_fn
