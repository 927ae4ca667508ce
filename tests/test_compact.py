"""Structured pruning is structural: pruned channels output exactly zero, residual groups go together,
and the `compact` export removes them physically while computing the same function (docs/deployment.md)."""

import os

import keras
import numpy as np
import pytest

from frep_tf import tflite
from frep_tf.compact import compact, removable_channels
from frep_tf.export import FILENAMES, export_model
from frep_tf.fuse import fuse
from frep_tf.layers import reparam_layers
from frep_tf.models import build_model
from frep_tf.structure import channel_graph
from frep_tf.training.ensemble import TemporalEnsemble
from frep_tf.training.pruning import (
    GlobalPruning,
    channel_alive,
    group_channel_keep,
    make_schedule,
    zero_removed_channels,
)
from frep_tf.training.robust_model import RobustModel


def _activations(model, x):
    """{layer name: output} of every layer of a functional model."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    return {layer.name: np.asarray(out) for layer, out in zip(layers, probe(x, training=False), strict=True)}


def _randomize_batchnorm(model, rng):
    # Non-trivial statistics and offsets, so a channel that is not zeroed would show.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                    rng.normal(0, 0.3, beta.shape).astype("float32"),
                    rng.normal(0, 0.3, mean.shape).astype("float32"),
                    rng.uniform(0.5, 1.5, var.shape).astype("float32"),
                ]
            )


def test_pruned_channels_output_exact_zeros_through_training_and_in_the_ensemble():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    net = build_model("resnet18", input_shape=(8, 8, 3), parameterization="channel", width=1 / 16)
    _randomize_batchnorm(net, rng)
    for layer in reparam_layers(net):
        if layer.use_bias:
            layer.bias.assign(rng.normal(0, 0.3, layer.bias.shape))
    # The natural objective keeps the test fast; the projection runs after any objective's update.
    model = RobustModel(net, objective="natural", epsilon=0.1, weight_decay=5e-4)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    x = rng.random((24, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 10, 24)
    pruning = GlobalPruning(make_schedule("oneshot", 0.7, begin_step=1, end_step=0, frequency=1), structured=True)
    # 3 steps, pruned before the second: the bias and BatchNorm offsets get gradients after the prune.
    ensemble = TemporalEnsemble(decay=0.5, warmup=0.0, interval=1)  # averages after every step
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[pruning, ensemble])
    assert int(model.ensemble_updates.numpy()) == 2
    assert bool(model.channels_pruned.numpy())
    graph = channel_graph(net)
    layers = {layer.name: layer for layer in net.layers}
    probe = rng.random((4, 8, 8, 3)).astype("float32")
    acts = {"network": _activations(net, probe), "ensemble": _activations(model.ensemble, probe)}
    removed_somewhere = 0
    for group in graph.groups:
        if group.frozen:
            continue
        alive = [channel_alive(layers[name].mask) for name in group.producers]
        for a in alive[1:]:  # a residual group keeps or removes a channel in every member
            np.testing.assert_array_equal(a, alive[0])
        dead = ~alive[0]
        removed_somewhere += int(dead.sum())
        # Every tensor of the group (conv, BatchNorm, ReLU, Add outputs) is exactly zero on a removed channel.
        names = group.producers + group.norms
        for which, values in acts.items():
            for name in names:
                assert np.all(values[name][..., dead] == 0), (which, name)
            assert any(np.any(values[name][..., ~dead] != 0) for name in names), which
    assert removed_somewhere > 0
    # The groups tied by residual Adds have several members; the stem's group holds the first stage.
    stem = graph.group_of("stem_conv")
    assert {"stage1_block1_conv2", "stage1_block2_conv2"} <= set(stem.producers)


@pytest.mark.parametrize("arch", ["vgg16", "resnet18", "wrn28_4"])
def test_compact_model_equals_the_masked_model(arch):
    rng = np.random.default_rng(1)
    net = build_model(arch, input_shape=(32, 32, 3), parameterization="channel", width=1 / 8)
    _randomize_batchnorm(net, rng)
    graph = channel_graph(net)
    layers = reparam_layers(net)
    keep = group_channel_keep({layer.name: np.asarray(layer.fused_kernel()) for layer in layers}, graph, 0.7)
    for layer in layers:
        layer.mask.assign(np.broadcast_to(keep[graph.output_group[layer.name]], layer.mask.shape).astype("float32"))
        if layer.use_bias:
            layer.bias.assign(rng.normal(0, 0.3, layer.bias.shape))
    zero_removed_channels(net, graph)
    fused = fuse(net)
    small, report = compact(fused)
    x = rng.random((4, 32, 32, 3)).astype("float32")
    reference = np.asarray(net(x))
    assert np.abs(reference).max() > 0.1
    # To 1e-5 of the logit scale (random BatchNorm statistics make wrn28_4's logits reach ~100).
    np.testing.assert_allclose(np.asarray(small(x)), reference, atol=1e-5 * max(1.0, np.abs(reference).max()))
    # Standard layers only, with the channels really gone.
    assert all(layer.__class__.__module__.startswith("keras.") for layer in small.layers)
    prunable = [g for g in graph.groups if not g.frozen and g.producers]
    expected = sum(int(keep[graph.output_group[g.producers[0]]].sum()) * len(g.producers) for g in prunable)
    assert report.channels_after == expected
    assert 0.25 <= report.channels_after / report.channels_before <= 0.35
    assert report.params_after == small.count_params() < 0.2 * report.params_before
    assert report.macs_after < 0.25 * report.macs_before


def test_a_channel_with_a_live_offset_is_not_removed():
    # A conv channel with a zero kernel whose BatchNorm offset is not zero outputs relu(offset): keep it.
    net = build_model("small_cnn", input_shape=(8, 8, 1), parameterization="plain", width=0.25)
    conv = net.get_layer("conv2")
    kernel = conv.kernel.numpy()
    kernel[..., 0] = 0
    conv.kernel.assign(kernel)
    fused = fuse(net)
    graph = channel_graph(fused)
    assert removable_channels(fused, graph)[graph.output_group["conv2"]].all()
    bn = fused.get_layer("bn2")
    bn.gamma.assign(np.r_[0.0, bn.gamma.numpy()[1:]])
    bn.beta.assign(np.r_[0.0, bn.beta.numpy()[1:]])
    assert not removable_channels(fused, graph)[graph.output_group["conv2"]][0]


def test_compact_export_writes_every_file_and_each_matches(tmp_path):
    # Seeded: an untrained network's two largest logits can lie within 0.1 % of the logit scale, where
    # int8 rounding decides the top-1 class (2 of 8 unseeded draws agreed on only 14 of 16 inputs).
    # Without a seed the weights depended on which tests ran before in the same worker.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(2)
    net = build_model("resnet18", input_shape=(16, 16, 3), parameterization="plain", width=1 / 8)
    graph = channel_graph(net)
    layers = reparam_layers(net)
    keep = group_channel_keep({layer.name: np.asarray(layer.fused_kernel()) for layer in layers}, graph, 0.7)
    for layer in layers:
        layer.mask.assign(np.broadcast_to(keep[graph.output_group[layer.name]], layer.mask.shape).astype("float32"))
    zero_removed_channels(net, graph)
    fused = fuse(net)
    x = rng.random((16, 16, 16, 3)).astype("float32")
    report = {}
    records = export_model(
        fused, str(tmp_path), formats=("tflite", "compact"), check_inputs=x, representative=x, compact_report=report
    )
    names = {r.format: r for r in records}
    assert set(names) == {"tflite", "compact_keras", "compact_saved_model", "compact_tflite", "compact_tflite_int8"}
    assert sorted(os.listdir(tmp_path)) == sorted(FILENAMES[f] for f in names)
    reference = np.asarray(fused(x))
    small = keras.models.load_model(tmp_path / FILENAMES["compact_keras"])
    np.testing.assert_allclose(np.asarray(small(x)), reference, atol=1e-5)
    np.testing.assert_allclose(tflite.predict(str(tmp_path / FILENAMES["compact_tflite"]), x), reference, atol=1e-4)
    assert names["compact_tflite_int8"].agreement >= 0.9
    assert names["compact_tflite"].bytes * 5 <= names["tflite"].bytes
    assert report["params_after"] < report["params_before"]


def test_group_ranking_uses_the_mean_member_norm_and_counts_every_member_in_the_budget():
    # a and b are summed by an Add (one group of 2 members, 4 channels); c is alone (4 channels).
    inputs = keras.Input((4, 4, 2))
    a = keras.layers.Conv2D(4, 1, name="a")(inputs)
    b = keras.layers.Conv2D(4, 1, name="b")(inputs)
    c = keras.layers.Conv2D(4, 1, name="c")(keras.layers.Add(name="add")([a, b]))
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D(name="gap")(c))
    graph = channel_graph(keras.Model(inputs, out))
    assert graph.group_of("a") is graph.group_of("b") and graph.group_of("a") is not graph.group_of("c")
    assert graph.group_of("head").frozen and graph.input_group["head"] == graph.output_group["c"]

    def kernel(norms, cin):
        k = np.zeros((1, 1, cin, len(norms)), np.float32)
        k[0, 0, 0] = norms  # column j has L2 norm norms[j]
        return k

    kernels = {
        "a": kernel([4.0, 3.0, 0.1, 0.1], 2),
        "b": kernel([0.0, 3.0, 0.1, 0.1], 2),  # channel 0 of the group: mean 2.0, channel 1: mean 3.0
        "c": kernel([2.5, 2.2, 0.5, 0.2], 4),
        "head": np.ones((4, 3), np.float32),
    }
    # 12 member channels (8 in the group, 4 in c). Keep 4: the best of each group first (group ch 1,
    # mean 3.0, 2 members; c ch 0, 2.5), then c ch 1 (2.2) before group ch 0 (mean 2.0; its sum, 4.0,
    # would have come first).
    keep = group_channel_keep(kernels, graph, sparsity=2 / 3)
    np.testing.assert_array_equal(keep[graph.output_group["a"]], [False, True, False, False])
    np.testing.assert_array_equal(keep[graph.output_group["c"]], [True, True, False, False])
    # Keep 6: then group ch 0 (2 members).
    keep = group_channel_keep(kernels, graph, sparsity=0.5)
    np.testing.assert_array_equal(keep[graph.output_group["a"]], [True, True, False, False])
    np.testing.assert_array_equal(keep[graph.output_group["c"]], [True, True, False, False])
    assert keep[graph.output_group["head"]].all()
    # At 99 % every group still keeps its best channel.
    keep = group_channel_keep(kernels, graph, sparsity=0.99)
    np.testing.assert_array_equal(keep[graph.output_group["a"]], [False, True, False, False])
    np.testing.assert_array_equal(keep[graph.output_group["c"]], [True, False, False, False])


def _concatenated():
    """A Concatenate of two pruned branches and the (frozen) image, read by a conv; a Flatten of a
    Concatenate, read by the classifier: each feature of `head` is (position, segment, channel)."""
    L = keras.layers
    inputs = keras.Input((8, 8, 3))
    a = L.BatchNormalization(name="bn_a")(L.Conv2D(8, 3, padding="same", activation="relu", name="a")(inputs))
    b = L.Conv2D(6, 1, name="b")(inputs)
    m = L.Conv2D(10, 3, strides=2, padding="same", activation="relu", name="mix")(
        L.Concatenate(name="cat")([a, b, inputs])
    )
    n = L.Conv2D(6, 1, activation="relu", name="side")(m)
    flat = L.Flatten(name="flat")(L.Concatenate(name="cat2")([m, n]))
    return keras.Model(inputs, L.Dense(5, name="head")(flat), name="concatenated")


def _flattened():
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
            L.BatchNormalization(name="bn1"),
            L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv2"),
            L.Flatten(name="flat"),
            L.Dense(12, activation="relu", name="hidden"),
            L.Dense(5, name="head"),
        ],
        name="flattened",
    )


def _normalised_concatenation():
    """A BatchNorm after a Concatenate: the analysis does not follow it, so a and b keep every channel."""
    L = keras.layers
    inputs = keras.Input((8, 8, 3))
    cat = L.Concatenate(name="cat")([L.Conv2D(4, 1, name="a")(inputs), L.Conv2D(3, 1, name="b")(inputs)])
    c = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="c")(L.BatchNormalization(name="bn")(cat))
    return keras.Model(inputs, L.Dense(5, name="head")(L.Flatten(name="flat")(c)), name="normalised_concatenation")


def _prune_channels(model, sparsity, rng):
    """Random weights, structured-pruned as training leaves them: the removed channels' kernel columns,
    biases and BatchNorm scales and offsets are zero. Returns the graph and each group's kept channels."""
    _randomize_batchnorm(model, rng)
    graph = channel_graph(model)
    producers = [layer for layer in model.layers if layer.name in graph.output_group]
    for layer in producers:
        fan_in = int(np.prod(layer.kernel.shape[:-1]))
        layer.kernel.assign(rng.normal(0, 1.5 / np.sqrt(fan_in), layer.kernel.shape))
        layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape))
    keep = group_channel_keep({layer.name: np.asarray(layer.kernel) for layer in producers}, graph, sparsity)
    for layer in producers:
        layer.kernel.assign(np.asarray(layer.kernel) * keep[graph.output_group[layer.name]])
    zero_removed_channels(model, graph)
    return graph, keep


@pytest.mark.parametrize("build", [_concatenated, _flattened, _normalised_concatenation])
def test_compact_slices_the_readers_of_concatenate_and_flatten(build):
    rng = np.random.default_rng(4)
    model = build()
    graph, keep = _prune_channels(model, 0.5, rng)
    kept = {name: int(keep[g].sum()) for name, g in graph.output_group.items()}
    small, report = compact(model)
    # Every reader of a Concatenate or Flatten keeps the kept channels of each segment, in order.
    expected_inputs = {
        "concatenated": lambda: {"mix": kept["a"] + kept["b"] + 3, "head": 16 * (kept["mix"] + kept["side"])},
        "flattened": lambda: {"hidden": 16 * kept["conv2"]},
        "normalised_concatenation": lambda: {"c": 7, "head": 16 * kept["c"]},
    }[model.name]()
    # (c reads the BatchNorm, which keeps a and b whole: one segment, nothing removed.)
    assert set(graph.composite_inputs) == set(expected_inputs) - {"c"}
    for name, features in expected_inputs.items():
        assert small.get_layer(name).kernel.shape[-2] == features, name
        assert features < model.get_layer(name).kernel.shape[-2] or name == "c", name
    for name, n in kept.items():
        assert small.get_layer(name).kernel.shape[-1] == n, name
    assert report.params_after < report.params_before
    x = rng.random((8, 8, 8, 3)).astype("float32")
    reference = np.asarray(model(x, training=False))
    assert np.ptp(reference, axis=0).max() > 0.1 * np.abs(reference).max()  # the outputs depend on the inputs
    np.testing.assert_allclose(
        np.asarray(small(x, training=False)), reference, atol=1e-5 * np.abs(reference).max(), rtol=1e-5
    )
