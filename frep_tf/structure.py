"""Which output channels of a functional model are tied together, and who reads them (docs/deployment.md).

A *channel space* is a set of tensors whose channel axis means the same thing: a conv's output, the
BatchNorm / ReLU / pooling after it, and every tensor joined to it by a residual `Add` (an Add sums
channel c of its inputs into channel c, so channel c can only be removed from all of them at once).
`channel_graph(model)` finds the spaces of a model built from Conv2D / Dense (standard or
reparameterized), BatchNormalization, activations, pooling and Add layers:

- `producers`: the conv / dense layers whose output channels the space is (a residual group has
  several: the convs at the end of each block and the stem or projection they are added to);
- `norms`: the BatchNorms applied inside the space (their scale/offset must be zero on a removed
  channel, or the channel outputs relu(offset) instead of zero);
- `consumers`: the conv / dense layers that read the space (their input channels go with it).

A space is `frozen` (no channel may be removed) when it is the model's input or output, or is read by
a layer this analysis does not know (Flatten, Concatenate, ...): removing channels there would change
what the model computes. Used by structured pruning (frep_tf.training.pruning) and by the `compact`
export (frep_tf.compact).
"""

from __future__ import annotations

import dataclasses

import keras

from frep_tf.layers.reparam import ReparamConv2D, ReparamDense

# Layers that keep the channel axis as it is: channel c of the output depends only on channel c of the input.
_CHANNELWISE = (
    keras.layers.BatchNormalization,
    keras.layers.ReLU,
    keras.layers.Activation,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Dropout,
    keras.layers.Normalization,
)


def is_producer(layer) -> bool:
    """A layer whose output channels are its own (a conv or dense layer with a full kernel)."""
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


@dataclasses.dataclass
class ChannelGraph:
    groups: list[ChannelGroup]
    output_group: dict[str, int]  # producer name -> the group of its output channels
    input_group: dict[str, int]  # consumer or BatchNorm name -> the group of its input channels

    def group_of(self, producer: str) -> ChannelGroup:
        return self.groups[self.output_group[producer]]


class _Spaces:
    """Union-find over channel spaces."""

    def __init__(self):
        self.parent: list[int] = []
        self.channels: list[int] = []
        self.frozen: list[bool] = []

    def new(self, channels: int, frozen: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.channels.append(int(channels))
        self.frozen.append(frozen)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> int:
        i, j = self.find(i), self.find(j)
        if i != j:
            self.parent[j] = i
            self.frozen[i] = self.frozen[i] or self.frozen[j]
        return i


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def channel_graph(model) -> ChannelGraph:
    """The channel spaces of a functional `model` (a RobustModel is read through its `network`)."""
    model = getattr(model, "network", model)
    spaces = _Spaces()
    space_of: dict[int, int] = {}  # id(KerasTensor) -> space
    producer_space: dict[str, int] = {}
    reads: list[tuple[str, str, int]] = []  # (role, layer name, space)
    for tensor in _as_list(model.inputs):
        space_of[id(tensor)] = spaces.new(tensor.shape[-1], frozen=True)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if len(layer._inbound_nodes) != 1:
            raise ValueError(
                f"channel_graph: layer {layer.name!r} is used {len(layer._inbound_nodes)} times; expected once"
            )
        inputs = [space_of[id(t)] for t in _as_list(layer.input)]
        outputs = _as_list(layer.output)
        if is_producer(layer):
            reads.append(("consumer", layer.name, inputs[0]))
            out = spaces.new(outputs[0].shape[-1])
            producer_space[layer.name] = out
        elif isinstance(layer, keras.layers.Add):
            out = inputs[0]
            for other in inputs[1:]:
                out = spaces.union(out, other)
        elif isinstance(layer, _CHANNELWISE) and len(inputs) == 1:
            out = inputs[0]
            if isinstance(layer, keras.layers.BatchNormalization):
                reads.append(("norm", layer.name, out))
        else:  # unknown: its inputs keep every channel, and so does its output
            for i in inputs:
                spaces.frozen[spaces.find(i)] = True
            out = spaces.new(outputs[0].shape[-1], frozen=True)
        for t in outputs:
            space_of[id(t)] = out
    for tensor in _as_list(model.outputs):
        spaces.frozen[spaces.find(space_of[id(tensor)])] = True

    roots: dict[int, int] = {}
    groups: list[ChannelGroup] = []

    def group_index(space: int) -> int:
        root = spaces.find(space)
        if root not in roots:
            roots[root] = len(groups)
            groups.append(ChannelGroup(channels=spaces.channels[root], frozen=spaces.frozen[root]))
        return roots[root]

    output_group = {}
    for name, space in producer_space.items():
        g = output_group[name] = group_index(space)
        groups[g].producers.append(name)
    input_group = {}
    for role, name, space in reads:
        g = input_group[name] = group_index(space)
        (groups[g].norms if role == "norm" else groups[g].consumers).append(name)
    return ChannelGraph(groups, output_group, input_group)
