"""Which output channels of a functional model are tied together, and who reads them (docs/deployment.md).

A *channel space* is a set of tensors whose channel axis means the same thing: a conv's output, the
BatchNorm / ReLU / pooling / depthwise convolution after it, and every tensor joined to it by a residual
`Add` (an Add sums channel c of its inputs into channel c, so channel c can only be removed from all of
them at once). `channel_graph(model)` finds the spaces of a model built from Conv2D / Dense (standard or
reparameterized), BatchNormalization, activations, pooling, padding, dropout, bias-free depthwise
convolutions, element-wise merges (Add, Multiply, ...), Concatenate and Flatten:

- `producers`: the conv / dense layers whose output channels the space is (a residual group has
  several: the convs at the end of each block and the stem or projection they are added to);
- `norms`: the BatchNorms applied inside the space (their scale/offset must be zero on a removed
  channel, or the channel outputs relu(offset) instead of zero);
- `consumers`: the conv / dense layers that read the space (their input channels go with it).

A tensor's channel axis is a list of segments, one space each: a Concatenate joins its inputs' lists, a
Flatten repeats its input's list once per position. A consumer reading several segments is listed in
`composite_inputs` instead of `consumers`.

A space is `frozen` (no channel may be removed) when it is the model's input or output, or is read by
a layer this analysis cannot follow (a Reshape, a LayerNormalization, a sigmoid that turns a removed
channel's zero into 0.5, a layer called twice, ...): removing channels there would change what the model
computes. Such layers are listed in `unfollowed` with the reason, and `check_structured` turns the first
one that keeps a prunable layer's channels from being removed into a one-line StructureError. Used by
structured pruning (frep_tf.training.pruning) and by the `compact` export (frep_tf.compact).
"""

from __future__ import annotations

import dataclasses
import math

import keras

from frep_tf.layers.reparam import ReparamConv2D, ReparamDense

L = keras.layers
# Channel c of the output depends only on channel c of the input, and a zero channel stays zero.
_CHANNELWISE = tuple(
    getattr(L, f"{kind}{d}D")
    for kind in ("MaxPooling", "AveragePooling", "GlobalAveragePooling", "GlobalMaxPooling", "ZeroPadding")
    + ("Cropping", "UpSampling", "SpatialDropout")
    for d in (1, 2, 3)
) + (L.Dropout, L.GaussianDropout, L.ActivityRegularization, L.Identity)
# Channel-wise, but a zero channel comes out non-zero ((0 - mean) / std): followed only where nothing can
# be removed anyway (the model's input, where they normally are).
_AFFINE = (L.Normalization, L.Rescaling)
# Element-wise merges: channel c of the output is made of channel c of every input (and is zero when all are).
_MERGES = (L.Add, L.Subtract, L.Average, L.Maximum, L.Minimum, L.Multiply)
# Activations that keep a removed channel at exactly zero (f(0) = 0).
_ZERO_PRESERVING = frozenset(
    "linear relu relu6 leaky_relu elu selu celu gelu silu swish hard_silu hard_swish mish tanh softsign "
    "hard_tanh soft_shrink hard_shrink tanh_shrink".split()
)
INPUT, OUTPUT = "(model input)", "(model output)"


class StructureError(ValueError):
    """Structured pruning cannot follow the model; the message is one line naming the layer."""


def is_producer(layer) -> bool:
    """A layer whose output channels are its own: a conv or dense layer (a reparameterized conv of any
    `groups`: each output channel has its own kernel slice; a standard grouped Conv2D is left to
    `compact`, which cannot slice it)."""
    if isinstance(layer, (ReparamConv2D, ReparamDense, keras.layers.Dense)):
        return True
    return type(layer) is keras.layers.Conv2D and getattr(layer, "groups", 1) == 1


@dataclasses.dataclass
class ChannelGroup:
    channels: int
    producers: list[str] = dataclasses.field(default_factory=list)
    norms: list[str] = dataclasses.field(default_factory=list)
    consumers: list[str] = dataclasses.field(default_factory=list)
    frozen: bool = False
    frozen_by: str = ""  # INPUT, OUTPUT or the name of the layer the analysis could not follow


@dataclasses.dataclass
class ChannelGraph:
    groups: list[ChannelGroup]
    output_group: dict[str, int]  # producer name -> the group of its output channels
    input_group: dict[str, int]  # consumer or BatchNorm name -> the group of its input channels
    # consumer name -> [(group, channels)] of each segment it reads, in order (after Concatenate / Flatten)
    composite_inputs: dict[str, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)
    unfollowed: dict[str, str] = dataclasses.field(default_factory=dict)  # layer name -> why

    def group_of(self, producer: str) -> ChannelGroup:
        return self.groups[self.output_group[producer]]


class _Spaces:
    """Union-find over channel spaces; a frozen space remembers who froze it (input / output first)."""

    def __init__(self):
        self.parent: list[int] = []
        self.channels: list[int] = []
        self.frozen: list[bool] = []
        self.frozen_by: list[str] = []

    def new(self, channels: int, frozen_by: str = "") -> int:
        self.parent.append(len(self.parent))
        self.channels.append(int(channels))
        self.frozen.append(bool(frozen_by))
        self.frozen_by.append(frozen_by)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def freeze(self, i: int, by: str) -> None:
        i = self.find(i)
        self.frozen[i] = True
        if not self.frozen_by[i] or by in (INPUT, OUTPUT):
            self.frozen_by[i] = by

    def union(self, i: int, j: int) -> int:
        i, j = self.find(i), self.find(j)
        if i != j:
            self.parent[j] = i
            if self.frozen[j]:
                self.freeze(i, self.frozen_by[j])
        return i


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _zero_preserving(activation) -> bool:
    return activation is None or getattr(activation, "__name__", "") in _ZERO_PRESERVING


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _activation_problem(layer) -> str | None:
    """Why `layer`'s activation keeps a removed channel from being zero, or None."""
    if isinstance(layer, L.ReLU):
        zero = float(layer.threshold) <= 0 or float(layer.negative_slope) == 0
        return None if zero else "ReLU with threshold > 0 and negative_slope > 0 maps 0 to a non-zero value"
    activation = getattr(layer, "activation", None)
    if not _zero_preserving(activation):
        return f"activation {getattr(activation, '__name__', activation)!r} maps a removed (zero) channel to a non-zero value"
    return None


class _Walk:
    """One pass over the layers of a functional model; a tensor's layout is a list of (space, channels)."""

    def __init__(self, model):
        self.model = model
        self.spaces = _Spaces()
        self.layout: dict[int, list[tuple[int, int]]] = {}  # id(KerasTensor) -> its segments
        self.producer_space: dict[str, int] = {}
        self.reads: list[tuple[str, str, int]] = []  # (role, layer name, space)
        self.composite: dict[str, list[int]] = {}  # consumer -> the spaces of its segments
        self.unfollowed: dict[str, str] = {}
        self.freeze_later: dict[int, str] = {}  # tensors of shared layers' other calls, frozen once seen

    def run(self) -> None:
        for tensor in _as_list(self.model.inputs):
            self._set(tensor, [(self.spaces.new(tensor.shape[-1], INPUT), tensor.shape[-1])])
        for layer in self.model.layers:
            if isinstance(layer, L.InputLayer):
                continue
            if len(layer._inbound_nodes) != 1:
                self._shared(layer)
                continue
            inputs = [self.layout[id(t)] for t in _as_list(layer.input)]
            outputs = _as_list(layer.output)
            if len(outputs) != 1:
                for t in outputs:
                    self._set(t, self._block(layer, inputs, [t], f"{type(layer).__name__} has several outputs"))
                continue
            self._set(outputs[0], self._step(layer, inputs, outputs))
        for tensor in _as_list(self.model.outputs):
            self._freeze(self.layout[id(tensor)], OUTPUT)

    def _set(self, tensor, layout) -> None:
        self.layout[id(tensor)] = layout
        if id(tensor) in self.freeze_later:
            self._freeze(layout, self.freeze_later[id(tensor)])

    def _freeze(self, layout, by: str) -> None:
        for space, _ in layout:
            self.spaces.freeze(space, by)

    def _block(self, layer, inputs, outputs, reason: str):
        """A layer this analysis cannot follow: every channel it reads or writes is kept."""
        self.unfollowed[layer.name] = reason
        for layout in inputs:
            self._freeze(layout, layer.name)
        channels = outputs[0].shape[-1]
        return [(self.spaces.new(channels, layer.name), channels)]

    def _shared(self, layer) -> None:
        reason = f"called {len(layer._inbound_nodes)} times"
        self.unfollowed[layer.name] = reason
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                if id(t) in self.layout:
                    self._freeze(self.layout[id(t)], layer.name)
                else:
                    self.freeze_later[id(t)] = layer.name
            for t in node.outputs:
                self._set(t, [(self.spaces.new(t.shape[-1], layer.name), t.shape[-1])])

    def _step(self, layer, inputs, outputs):
        """The layout of `layer`'s outputs, recording what it produces, reads or normalises."""
        if is_producer(layer):
            self._read("consumer", layer, inputs[0])
            channels = outputs[0].shape[-1]
            space = self.spaces.new(channels)
            self.producer_space[layer.name] = space
            problem = _activation_problem(layer)
            if problem:
                self.unfollowed[layer.name] = problem
                self.spaces.freeze(space, layer.name)
            return [(space, channels)]
        if len(inputs) > 1 or isinstance(layer, _MERGES + (L.Concatenate,)):
            return self._merge(layer, inputs, outputs)
        reason = self._channelwise_problem(layer, inputs[0])
        if reason:
            return self._block(layer, inputs, outputs, reason)
        if isinstance(layer, L.Flatten):
            return self._flatten(layer, inputs, outputs)
        if isinstance(layer, L.BatchNormalization):
            if len(inputs[0]) > 1:
                return self._block(layer, inputs, outputs, "it normalises a concatenation of several channel groups")
            self.reads.append(("norm", layer.name, inputs[0][0][0]))
        return inputs[0]

    def _channelwise_problem(self, layer, layout) -> str | None:
        """Why `layer` (one input) cannot be followed as a channel-wise layer, or None."""
        if not _channels_last(layer):
            return "its channels are not on the last axis (data_format='channels_first')"
        if isinstance(layer, (L.ReLU, L.LeakyReLU, L.ELU, L.PReLU, L.Activation)):
            return _activation_problem(layer)
        if isinstance(layer, L.BatchNormalization):
            axis = _as_list(layer.axis)
            rank = len(layer.input.shape)
            return None if axis in ([-1], [rank - 1]) else "it normalises another axis than the channels"
        if isinstance(layer, L.DepthwiseConv2D):
            if layer.depth_multiplier != 1:
                return "depth_multiplier > 1 spreads each channel over several outputs"
            if layer.use_bias:
                return "its bias would make a removed (zero) channel non-zero (build it with use_bias=False)"
            return _activation_problem(layer)
        if isinstance(layer, _AFFINE):
            frozen = all(self.spaces.frozen[self.spaces.find(s)] for s, _ in layout)
            return None if frozen else "it maps a removed (zero) channel to a non-zero value"
        if isinstance(layer, _CHANNELWISE + (L.Flatten,)):
            return None
        if isinstance(layer, keras.Model):
            return "a nested model (frep_tf.reparameterize inlines nested models)"
        return f"{type(layer).__name__} is not a layer whose channels this analysis knows how to follow"

    def _merge(self, layer, inputs, outputs):
        """Concatenate on the channel axis joins the layouts; element-wise merges tie them channel by channel."""
        rank = len(outputs[0].shape)
        if isinstance(layer, L.Concatenate) and layer.axis in (-1, rank - 1):
            return self._collapse_frozen([seg for layout in inputs for seg in layout], outputs)
        if not isinstance(layer, _MERGES + (L.Concatenate,)):
            return self._block(layer, inputs, outputs, f"{type(layer).__name__} is not a merge this analysis knows")
        shapes = {tuple(n for _, n in layout) for layout in inputs}
        if len(shapes) != 1:
            return self._block(layer, inputs, outputs, "its inputs' channels are not made of the same groups")
        first = inputs[0]
        for other in inputs[1:]:
            for (a, _), (b, _) in zip(first, other, strict=True):
                self.spaces.union(a, b)
        return first

    def _flatten(self, layer, inputs, outputs):
        spatial = layer.input.shape[1:-1]
        if any(d is None for d in spatial):
            return self._block(layer, inputs, outputs, "it flattens positions of unknown size")
        # channels_last: feature (position, c) of the output is channel c of the input at that position.
        return self._collapse_frozen(inputs[0] * math.prod(spatial), outputs)

    def _collapse_frozen(self, layout, outputs):
        """A layout with nothing removable in it is one frozen space (as an unknown layer's output)."""
        if all(self.spaces.frozen[self.spaces.find(s)] for s, _ in layout):
            by = self.spaces.frozen_by[self.spaces.find(layout[0][0])]
            channels = outputs[0].shape[-1]
            return [(self.spaces.new(channels, by), channels)]
        return layout

    def _read(self, role: str, layer, layout) -> None:
        if len(layout) == 1:
            self.reads.append((role, layer.name, layout[0][0]))
        else:
            self.composite[layer.name] = [s for s, _ in layout]


def channel_graph(model) -> ChannelGraph:
    """The channel spaces of a functional or Sequential `model` (a RobustModel is read through its `network`)."""
    walk = _Walk(getattr(model, "network", model))
    walk.run()
    spaces = walk.spaces
    roots: dict[int, int] = {}
    groups: list[ChannelGroup] = []

    def group_index(space: int) -> int:
        root = spaces.find(space)
        if root not in roots:
            roots[root] = len(groups)
            groups.append(
                ChannelGroup(
                    channels=spaces.channels[root], frozen=spaces.frozen[root], frozen_by=spaces.frozen_by[root]
                )
            )
        return roots[root]

    output_group = {}
    for name, space in walk.producer_space.items():
        g = output_group[name] = group_index(space)
        groups[g].producers.append(name)
    input_group = {}
    for role, name, space in walk.reads:
        g = input_group[name] = group_index(space)
        (groups[g].norms if role == "norm" else groups[g].consumers).append(name)
    composite = {
        name: [(group_index(s), spaces.channels[spaces.find(s)]) for s in segments]
        for name, segments in walk.composite.items()
    }
    return ChannelGraph(groups, output_group, input_group, composite, dict(walk.unfollowed))


def check_structured(graph: ChannelGraph, prunable: list[str]) -> None:
    """Raise StructureError, naming the layer, when structured pruning cannot follow the model: a prunable
    layer outside the graph (inside a nested model), or a layer the analysis cannot follow that keeps the
    channels of prunable layers (`prunable`: their names) from being removed."""
    prunable_set = set(prunable)
    for name in prunable:
        if name not in graph.output_group and name in graph.unfollowed:
            raise StructureError(
                f"structured pruning cannot follow layer {name!r}: {graph.unfollowed[name]}; "
                "prune unstructured (structured=False), which works on any model"
            )
        if name not in graph.output_group:
            raise StructureError(
                f"structured pruning cannot see layer {name!r}: it is not in the model's top-level graph "
                "(inside a nested model?); reparameterize the model with frep_tf.reparameterize, which inlines "
                "nested models, or prune unstructured"
            )
    for group in graph.groups:
        blocked = [p for p in group.producers if p in prunable_set]
        if group.frozen and blocked and group.frozen_by in graph.unfollowed:
            raise StructureError(
                f"structured pruning cannot follow layer {group.frozen_by!r}: {graph.unfollowed[group.frozen_by]}; "
                f"it keeps the output channels of {', '.join(blocked)} from being removed. Change that layer, "
                "or prune unstructured (structured=False), which works on any model"
            )
