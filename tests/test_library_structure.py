"""Pruning models frep_tf did not build (docs/library.md): structured pruning follows residual adds,
concatenations, flattening and depthwise convolutions, names the layer it cannot follow, and unstructured
pruning works regardless."""

import os

import keras
import numpy as np
import pytest

import frep_tf
from frep_tf.layers import reparam_layers
from frep_tf.structure import StructureError, channel_graph, check_structured

L = keras.layers
RNG = np.random.default_rng(0)
X = RNG.random((64, 8, 8, 3)).astype("float32")
Y = RNG.integers(0, 5, 64).astype("int32")


def mobile_block(gate=None):
    """An inverted residual block (expand, ReLU6, padding, bias-free depthwise, project) added to a side
    branch, concatenated with another conv, then a strided conv, Flatten and the classifier."""
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(8, 1, use_bias=False, name="expand")(inputs)
    a = L.ReLU(6.0, name="relu6")(L.BatchNormalization(name="bn_expand")(a))
    a = L.DepthwiseConv2D(3, use_bias=False, name="dw")(L.ZeroPadding2D(1, name="pad")(a))
    a = L.BatchNormalization(name="bn_dw")(a)
    b = L.Conv2D(8, 1, name="project")(a)
    c = L.Conv2D(8, 3, padding="same", activation="relu", name="side")(inputs)
    s = L.Add(name="add")([b, c])
    if gate is not None:
        s = gate(s)
    d = L.Conv2D(4, 3, padding="same", name="other")(inputs)
    e = L.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="mix")(L.Concatenate(name="cat")([s, d]))
    return keras.Model(inputs, L.Dense(5, name="head")(L.Flatten(name="flat")(e)), name="mobile_block")


def _train(net, **callback_args):
    robust = frep_tf.RobustModel(frep_tf.reparameterize(net, verbose=False), objective="natural", epsilon=0.1)
    robust.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    robust.fit(X, Y, batch_size=16, epochs=2, verbose=0, callbacks=frep_tf.callbacks(prune_epoch=1, **callback_args))
    return robust


def _alive(layer) -> np.ndarray:
    mask = layer.mask.numpy().reshape(-1, layer.mask.shape[-1])
    assert set(np.unique(mask.min(axis=0) == mask.max(axis=0))) == {True}, f"{layer.name}: not whole channels"
    return mask.max(axis=0) > 0


def test_channel_graph_follows_adds_concatenations_depthwise_and_flatten():
    graph = channel_graph(frep_tf.reparameterize(mobile_block(), verbose=False))
    assert not graph.unfollowed
    expand, residual = graph.group_of("expand"), graph.group_of("project")
    assert expand.norms == ["bn_expand", "bn_dw"] and expand.consumers == ["project"] and not expand.frozen
    assert residual is graph.group_of("side") and not residual.frozen
    assert graph.composite_inputs["mix"] == [(graph.output_group["project"], 8), (graph.output_group["other"], 4)]
    assert len(graph.composite_inputs["head"]) == 16  # Flatten: mix's 6 channels at each of 4 x 4 positions
    assert graph.group_of("head").frozen_by == "(model output)"


def test_structured_pruning_removes_whole_channels_that_output_exact_zeros():
    keras.utils.set_random_seed(0)
    robust = _train(mobile_block(), sparsity=0.5, structured=True)
    layers = {layer.name: layer for layer in reparam_layers(robust.network)}
    alive = {name: _alive(layer) for name, layer in layers.items()}
    assert alive["head"].all()  # the classes
    assert (alive["project"] == alive["side"]).all()  # one residual group
    pruned = sum(int((~a).sum()) for n, a in alive.items() if n != "head")
    assert 0.4 <= pruned / sum(a.size for n, a in alive.items() if n != "head") <= 0.6
    removed = ~alive["expand"]
    assert removed.any()
    net = robust.network
    probe = keras.Model(net.input, [net.get_layer(n).output for n in ("bn_dw", "add", "mix")])
    bn_dw, add, mix = (np.asarray(t) for t in probe(X[:8], training=False))
    assert np.all(bn_dw[..., removed] == 0) and np.all(add[..., ~alive["project"]] == 0)
    assert np.all(mix[..., ~alive["mix"]] == 0)
    fused = frep_tf.fuse(robust)
    np.testing.assert_allclose(np.asarray(fused(X[:8])), np.asarray(net(X[:8])), atol=1e-5)
    for name, a in alive.items():
        kernel = robust.ensemble.get_layer(name).kernel.numpy()
        assert np.all(kernel[..., ~a] == 0), name


@pytest.mark.parametrize(
    "gate, name, reason",
    [
        (L.Activation("sigmoid", name="gate"), "gate", "activation 'sigmoid' maps a removed (zero) channel"),
        (L.LayerNormalization(name="gate"), "gate", "LayerNormalization is not a layer"),
        (L.Reshape((8, 8, 8), name="gate"), "gate", "Reshape is not a layer"),
    ],
)
def test_structured_pruning_names_the_layer_it_cannot_follow(gate, name, reason):
    net = frep_tf.reparameterize(mobile_block(gate), verbose=False)
    with pytest.raises(StructureError) as info:
        check_structured(channel_graph(net), [layer.name for layer in reparam_layers(net)])
    message = str(info.value)
    assert f"cannot follow layer {name!r}: {reason}" in message and "\n" not in message
    assert "output channels of project, side" in message


def test_a_layer_called_twice_is_named_too():
    inputs = keras.Input((8, 8, 2))
    shared = L.Conv2D(2, 3, padding="same", name="shared")
    head = L.Dense(3, name="head")(L.GlobalAveragePooling2D()(shared(shared(inputs))))
    net = frep_tf.reparameterize(keras.Model(inputs, head), verbose=False)
    with pytest.raises(StructureError, match="^structured pruning cannot follow layer 'shared': called 2 times; "):
        check_structured(channel_graph(net), [layer.name for layer in reparam_layers(net)])


def test_fit_refuses_structured_pruning_it_cannot_follow_and_prunes_unstructured():
    with pytest.raises(StructureError, match="cannot follow layer 'gate'"):
        _train(mobile_block(L.Activation("sigmoid", name="gate")), sparsity=0.5, structured=True)
    robust = _train(mobile_block(L.Activation("sigmoid", name="gate")), sparsity=0.5)
    masks = np.concatenate([layer.mask.numpy().ravel() for layer in reparam_layers(robust.network)])
    assert np.mean(masks == 0) == pytest.approx(0.5, abs=0.01)


def test_compact_export_names_the_layer_it_cannot_slice(tmp_path):
    net = frep_tf.reparameterize(mobile_block(), verbose=False)
    with pytest.raises(
        ValueError, match="format 'compact' cannot remove channels around layer 'dw' \\(DepthwiseConv2D\\)"
    ):
        frep_tf.export(net, str(tmp_path), formats=("compact",))
    inputs = keras.Input((4, 4, 2))
    shared = L.Conv2D(2, 1, name="shared")
    flat = L.Flatten(name="flat")(shared(shared(inputs)))
    net = frep_tf.reparameterize(keras.Model(inputs, L.Dense(2, name="head")(flat)), verbose=False)
    with pytest.raises(ValueError) as info:
        frep_tf.export(net, str(tmp_path), formats=("compact",))
    message = str(info.value)
    assert message.startswith("export: format 'compact' cannot follow layer 'shared': called 2 times;"), message
    assert "\n" not in message and not os.listdir(tmp_path)


def concatenated():
    """Two branches concatenated on the channel axis, read by a conv; Flatten; the classifier."""
    inputs = keras.Input((8, 8, 3))
    a = L.BatchNormalization(name="bn_a")(L.Conv2D(8, 3, padding="same", activation="relu", name="a")(inputs))
    b = L.Conv2D(6, 1, name="b")(inputs)
    mix = L.Conv2D(12, 3, strides=2, padding="same", activation="relu", name="mix")(L.Concatenate(name="cat")([a, b]))
    return keras.Model(inputs, L.Dense(5, name="head")(L.Flatten(name="flat")(mix)), name="concatenated")


def flattened():
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
            L.BatchNormalization(name="bn1"),
            L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv2"),
            L.Flatten(name="flat"),
            L.Dense(5, name="head"),
        ],
        name="flattened",
    )


@pytest.mark.parametrize("build", [concatenated, flattened])
def test_compact_export_slices_the_readers_of_concatenate_and_flatten(tmp_path, build):
    keras.utils.set_random_seed(0)
    robust = _train(build(), sparsity=0.6, structured=True)
    records = frep_tf.export(robust, str(tmp_path), formats=("keras", "compact"), int8_min_agreement=0.0)
    assert [r.format for r in records] == [
        "keras",
        "compact_keras",
        "compact_saved_model",
        "compact_tflite",
        "compact_tflite_int8",
    ]
    fused = keras.models.load_model(tmp_path / "model.keras")
    small = keras.models.load_model(tmp_path / "model_compact.keras")
    alive = {layer.name: _alive(layer) for layer in reparam_layers(robust.network)}
    kept = {name: int(a.sum()) for name, a in alive.items()}
    assert all(kept[name] < a.size for name, a in alive.items() if name != "head"), kept  # something to slice
    # Every kernel loses the removed channels on both sides: after the Concatenate, mix reads the kept
    # channels of a, then of b; after the Flatten, head reads the kept channels at each of 4 x 4 positions.
    readers = {
        "concatenated": {"mix": ("a", "b"), "head": ("mix",)},
        "flattened": {"conv2": ("conv1",), "head": ("conv2",)},
    }
    for name, sources in readers[build.__name__].items():
        positions = 16 if name == "head" else 1
        inputs = small.get_layer(name).kernel.shape[-2]
        assert inputs == positions * sum(kept[s] for s in sources) < fused.get_layer(name).kernel.shape[-2], name
    for layer in small.layers:
        if isinstance(layer, (L.Conv2D, L.Dense)):
            assert layer.kernel.shape[-1] == kept[layer.name], layer.name
    reference = np.asarray(fused(X, training=False))
    assert np.ptp(reference, axis=0).max() > 0.1 * np.abs(reference).max()  # the outputs depend on the inputs
    np.testing.assert_allclose(
        np.asarray(small(X, training=False)), reference, atol=1e-5 * np.abs(reference).max(), rtol=1e-5
    )
