"""The `compact` export: a structured-pruned model with its removed channels physically gone (docs/deployment.md).

A channel of a group (frep_tf.structure) is removable when it outputs exactly zero: every producer's
kernel column and bias on it are zero, and so are the scale and offset of every BatchNorm in the group
(then every tensor of the group is zero on that channel: BatchNorm gives 0 * (x - mean) / std + 0,
ReLU, pooling and Add keep zeros). `compact(model)` rebuilds the model from standard Keras layers
without those channels: each producer loses the output channels, each BatchNorm its entries, and each
consumer (the next convs, the dense layer after global pooling or a Flatten, a conv after a
Concatenate) the matching input channels. It computes the same function; tests check the outputs to 1e-5.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from frep_tf.structure import channel_graph, is_producer


@dataclasses.dataclass(frozen=True)
class CompactReport:
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    channels_before: int  # output channels of the prunable (non-frozen) groups' producers
    channels_after: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def removable_channels(model, graph=None) -> dict[int, np.ndarray]:
    """{group index: bool array of the channels kept in the compact model}."""
    graph = graph or channel_graph(model)
    layers = {layer.name: layer for layer in model.layers}
    keep = {}
    for g, group in enumerate(graph.groups):
        if group.frozen or not group.producers:
            keep[g] = np.ones(group.channels, bool)
            continue
        zero = np.ones(group.channels, bool)
        for name in group.producers:
            layer = layers[name]
            kernel = np.asarray(layer.kernel)
            zero &= np.all(kernel.reshape(-1, group.channels) == 0, axis=0)
            if layer.bias is not None:
                zero &= np.asarray(layer.bias) == 0
        for name in group.norms:
            bn = layers[name]
            if bn.gamma is None or bn.beta is None:  # without both, a zero input does not give zero
                zero &= False
            else:
                zero &= (np.asarray(bn.gamma) == 0) & (np.asarray(bn.beta) == 0)
        kept = ~zero
        if not kept.any():  # a group that is all zero still needs one channel to have a shape
            kept[0] = True
        keep[g] = kept
    return keep


def macs(model) -> int:
    """Multiply-accumulates of one image through the model's Conv2D and Dense layers."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            out = layer.output.shape
            kh, kw, cin, cout = layer.kernel.shape
            total += int(np.prod(out[1:-1])) * kh * kw * (cin // getattr(layer, "groups", 1)) * cout
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


def unfollowed_layer(model, graph=None) -> str | None:
    """What keeps `compact` from slicing a standard-layer `model`'s kernels ("layer 'name': why"), or None:
    a Conv2D / Dense whose channels the analysis could not follow (one called twice), or a reader of a
    Concatenate / Flatten whose input features are not its inputs' channel groups side by side."""
    graph = graph or channel_graph(model)
    for layer in model.layers:
        reads = layer.name in graph.input_group or layer.name in graph.composite_inputs
        if is_producer(layer) and not (layer.name in graph.output_group and reads):
            return f"layer {layer.name!r}: {graph.unfollowed.get(layer.name, 'it is not in the channel graph')}"
    for name, segments in graph.composite_inputs.items():
        features = model.get_layer(name).kernel.shape[-2]
        if sum(n for _, n in segments) != features:
            return (
                f"layer {name!r}: it reads {features} input features, the channel groups of its inputs have "
                f"{sum(n for _, n in segments)}"
            )
    return None


def compact(model) -> tuple[keras.Model, CompactReport]:
    """A standard-layer model without the removable channels of `model` (a fused, standard-layer model)."""
    sliceable = (keras.layers.Conv2D, keras.layers.Dense, keras.layers.BatchNormalization, keras.layers.Normalization)
    for layer in model.layers:
        if layer.weights and not (
            isinstance(layer, sliceable) and (is_producer(layer) or not hasattr(layer, "kernel"))
        ):
            raise ValueError(
                f"compact: layer {layer.name!r} ({type(layer).__name__}) is not a standard Conv2D, Dense or "
                "BatchNormalization layer; compact a fused model (frep_tf.fuse)"
            )
    graph = channel_graph(model)
    problem = unfollowed_layer(model, graph)
    if problem:
        raise ValueError(f"compact: cannot follow {problem}; export the other formats")
    keep = removable_channels(model, graph)
    out_index = {name: np.flatnonzero(keep[g]) for name, g in graph.output_group.items()}
    in_index = {name: np.flatnonzero(keep[g]) for name, g in graph.input_group.items()}
    # A consumer of a Concatenate or a Flatten reads its input features as segments, one channel group
    # each, in the order of its input axis (frep_tf.structure; a Flatten of P positions of C channels
    # lists the C channels' segments once per position: feature p * C + c), so the inputs it keeps are
    # the segments' kept channels, concatenated.
    for name, segments in graph.composite_inputs.items():
        in_index[name] = np.flatnonzero(np.concatenate([keep[g] for g, _ in segments]))

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.Conv2D):
            config["filters"] = len(out_index[layer.name])
        elif isinstance(layer, keras.layers.Dense):
            config["units"] = len(out_index[layer.name])
        return layer.__class__.from_config(config)

    small = keras.models.clone_model(model, clone_function=clone)
    by_name = {layer.name: layer for layer in small.layers}
    for layer in model.layers:
        if not layer.weights:
            continue
        dst = by_name[layer.name]
        if is_producer(layer):
            kernel = np.asarray(layer.kernel)
            kernel = np.take(np.take(kernel, in_index[layer.name], axis=-2), out_index[layer.name], axis=-1)
            weights = [kernel]
            if layer.bias is not None:
                weights.append(np.asarray(layer.bias)[out_index[layer.name]])
            dst.set_weights(weights)
        elif isinstance(layer, keras.layers.BatchNormalization) and layer.name in in_index:
            dst.set_weights([np.asarray(w)[in_index[layer.name]] for w in layer.get_weights()])
        else:
            # Also a BatchNorm the channel analysis did not follow (after a concatenation, or called twice):
            # it froze the BatchNorm's inputs, so all of its channels are kept.
            dst.set_weights(layer.get_weights())
    prunable = [g for g in graph.groups if not g.frozen and g.producers]
    report = CompactReport(
        params_before=int(model.count_params()),
        params_after=int(small.count_params()),
        macs_before=macs(model),
        macs_after=macs(small),
        channels_before=sum(g.channels * len(g.producers) for g in prunable),
        channels_after=sum(
            int(keep[i].sum()) * len(g.producers) for i, g in enumerate(graph.groups) if not g.frozen and g.producers
        ),
    )
    return small, report
