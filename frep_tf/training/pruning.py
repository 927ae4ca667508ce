"""Global magnitude pruning (paper III-D): how masks are computed, and the callback that applies them.

Kept apart as in TF-MOT's sparsity package: the *schedule* (when, how much) is a TF-MOT schedule
object; `global_unstructured_masks` / `group_channel_keep` (how) are pure numpy functions;
`GlobalPruning` (driving it from fit) applies the masks to the network and the ensemble.
TF-MOT's own Keras wrappers need Keras 2 and prune per layer, so the masks are ours.
"""

from __future__ import annotations

import os

import keras
import numpy as np


class PruningError(RuntimeError):
    """Pruning would leave a layer with (almost) no weight; the message is one line naming the layers."""


# Without --min_layer_density, a layer keeping less than this share of the overall density is refused
# (at 99 % sparsity: a layer keeping under 0.02 % of its weights). Global ranking legitimately keeps
# less of wide layers than of narrow ones; measured on the digits quickstart at 99 %: FReP's conv3
# keeps 0.12 % (88 of 73,728; 6x above the floor), "Ori" (plain) 0.016 % (12), which leaves at most 12
# of its 128 output channels connected.
FLOOR_OF_MEAN_DENSITY = 0.02


def global_unstructured_masks(kernels: list[np.ndarray], sparsity: float, min_density: float = 0.0) -> list[np.ndarray]:
    """Keep the top-k |w| over all kernels together, k = round((1 - sparsity) * total).

    With `min_density` > 0 every kernel first keeps its own ceil(min_density * size) largest entries;
    they count against k, and the rest of the budget is ranked globally as before.
    """
    sizes = [k.size for k in kernels]
    flat = np.abs(np.concatenate([k.ravel() for k in kernels]))
    keep = int(round((1.0 - sparsity) * flat.size))
    mask = np.zeros(flat.size, np.float32)
    if min_density > 0:
        start = 0
        for n in sizes:
            floor = min(n, int(np.ceil(min_density * n - 1e-9)))
            if floor:
                mask[start + np.argpartition(-flat[start : start + n], floor - 1)[:floor]] = 1.0
            start += n
        rest = keep - int(mask.sum())
        if rest > 0:
            # The floors are kept already: rank what is left.
            scores = np.where(mask == 1.0, -np.inf, flat)
            mask[np.argpartition(-scores, rest - 1)[:rest]] = 1.0
    elif keep > 0:
        mask[np.argpartition(-flat, keep - 1)[:keep]] = 1.0
    out, start = [], 0
    for k, n in zip(kernels, sizes, strict=True):
        out.append(mask[start : start + n].reshape(k.shape))
        start += n
    return out


def group_channel_keep(kernels: dict[str, np.ndarray], graph, sparsity: float) -> dict[int, np.ndarray]:
    """Structured pruning over channel groups (frep_tf.structure): {group index: kept channels (bool)}.

    A residual group (the convs whose outputs one `Add` sums) keeps or loses channel c in all its
    members at once. Channel c of a group scores the mean of its members' L2 norms (paper Eq. 17 per
    member, summed, divided by the members): removing it frees one channel per member, so the mean is
    the norm per unit of the channel budget, and a one-member group scores exactly its own norm.
    The budget counts member channels: k = round((1 - sparsity) * channels of the non-frozen groups).
    Channels are kept in order of score until k is reached (a group channel may overshoot k by fewer
    than its members); every group keeps at least its best channel. Frozen groups (the classifier's
    outputs) keep every channel.
    """
    keep: dict[int, np.ndarray] = {}
    units = []  # (score, members, group, channel)
    budget_total = 0
    for g, group in enumerate(graph.groups):
        if not group.producers:
            continue
        if group.frozen:
            keep[g] = np.ones(group.channels, bool)
            continue
        norms = [np.sqrt(np.sum(np.square(kernels[p].reshape(-1, group.channels)), axis=0)) for p in group.producers]
        score = np.sum(norms, axis=0) / len(norms)
        keep[g] = np.zeros(group.channels, bool)
        keep[g][int(np.argmax(score))] = True  # at least one channel per group
        budget_total += group.channels * len(norms)
        units += [(float(score[c]), len(norms), g, c) for c in range(group.channels)]
    budget = int(round((1.0 - sparsity) * budget_total))
    kept = sum(int(keep[g].sum()) * len(graph.groups[g].producers) for g in keep if not graph.groups[g].frozen)
    for _, members, g, c in sorted(units, key=lambda u: -u[0]):
        if kept >= budget:
            break
        if not keep[g][c]:
            keep[g][c] = True
            kept += members
    return keep


def channel_alive(mask) -> np.ndarray:
    """Output channels of a kernel mask that are not pruned (some entry of the channel is 1)."""
    mask = np.asarray(mask)
    return mask.reshape(-1, mask.shape[-1]).max(axis=0) > 0


def zero_removed_channels(model, graph) -> None:
    """Zero the bias of every pruned output channel, and the BatchNorm scale and offset on it.

    Which channels are pruned is read from each producer's kernel (mask or fused kernel: a channel is
    pruned when its kernel column is all zero); `model` is a reparameterized network (masks) or a
    standard-layer copy of it, such as the ensemble (kernels). With the kernel, bias and BatchNorm of
    a channel at zero, the channel outputs exactly zero, and so does every tensor of its group.
    """
    layers = {layer.name: layer for layer in getattr(model, "network", model).layers}
    for group in graph.groups:
        if group.frozen or not group.producers:
            continue
        alive = None
        for name in group.producers:
            layer = layers[name]
            source = layer.mask if hasattr(layer, "mask") else layer.kernel
            a = channel_alive(source)
            alive = a if alive is None else alive | a
            if getattr(layer, "bias", None) is not None:
                layer.bias.assign(np.asarray(layer.bias) * a)
        for name in group.norms:
            bn = layers[name]
            for w in (bn.gamma, bn.beta):
                if w is not None:
                    w.assign(np.asarray(w) * alive)


def structural_projection(network, graph) -> list:
    """(variable, mask variable) pairs: bias / BatchNorm variables to multiply by the channels alive
    in the mask after every optimizer step, so a pruned channel stays exactly zero while it trains."""
    layers = {layer.name: layer for layer in network.layers}
    pairs = []
    for group in graph.groups:
        if group.frozen or not group.producers:
            continue
        first = layers[group.producers[0]]
        for name in group.producers:
            layer = layers[name]
            if getattr(layer, "bias", None) is not None:
                pairs.append((layer.bias, layer.mask))
        for name in group.norms:
            bn = layers[name]
            pairs += [(w, first.mask) for w in (bn.gamma, bn.beta) if w is not None]
    return pairs


def layer_densities(names: list[str], masks: list[np.ndarray]) -> dict[str, dict]:
    """{layer: {kept, total, fraction}} of a set of masks, in layer order."""
    out = {}
    for name, mask in zip(names, masks, strict=True):
        kept = int(np.count_nonzero(mask))
        out[name] = {"kept": kept, "total": int(mask.size), "fraction": kept / max(int(mask.size), 1)}
    return out


def check_layer_densities(densities: dict[str, dict], sparsity: float, min_density: float = 0.0) -> None:
    """Refuse masks that cut the network: a layer keeping no weight, or (without --min_layer_density)
    less than FLOOR_OF_MEAN_DENSITY of the overall density. Raises PruningError naming the layers."""
    floor = min_density if min_density > 0 else FLOOR_OF_MEAN_DENSITY * (1.0 - sparsity)
    low = {n: d for n, d in densities.items() if d["kept"] == 0 or d["fraction"] < floor}
    if not low:
        return
    cut = [n for n, d in low.items() if d["kept"] == 0]
    what = ", ".join(f"{n} keeps {d['kept']:,} of {d['total']:,}" for n, d in low.items())
    kept_all = sum(d["kept"] for d in densities.values())
    total_all = sum(d["total"] for d in densities.values())
    suggest = max(floor, 0.5 * (1.0 - sparsity))
    raise PruningError(
        f"global pruning to --sparsity={sparsity:g} would {'disconnect the network' if cut else 'nearly cut layers off'}: "
        f"{what} weights (floor {100 * floor:.3g} % of each layer; {kept_all:,} of {total_all:,} kept overall). "
        f"Use --min_layer_density={suggest:.3g} to keep at least that fraction of every layer (taken from the "
        "global budget), or a lower --sparsity"
    )


def make_schedule(kind: str, sparsity: float, begin_step: int, end_step: int, frequency: int):
    """A TF-MOT pruning schedule: ConstantSparsity (one-shot at begin_step) or PolynomialDecay."""
    # Importing TF-MOT sets TF_USE_LEGACY_KERAS=1 in this process's environment (it routes tf.keras to
    # Keras 2). We always use `import keras`, and restore the variable so subprocesses are unaffected.
    previous = os.environ.get("TF_USE_LEGACY_KERAS")
    from tensorflow_model_optimization.sparsity import keras as tfmot_sparsity

    if previous is None:
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
    else:
        os.environ["TF_USE_LEGACY_KERAS"] = previous
    if kind == "oneshot":
        return tfmot_sparsity.ConstantSparsity(sparsity, begin_step=begin_step, end_step=begin_step, frequency=1)
    return tfmot_sparsity.PolynomialDecay(
        0.0, sparsity, begin_step=begin_step, end_step=end_step, frequency=max(1, frequency)
    )


def _parameters(layer) -> list:
    """The learned parameters of a standard layer (not BatchNorm statistics or input normalisation)."""
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
        return [layer.kernel] + ([layer.bias] if layer.use_bias else [])
    if isinstance(layer, keras.layers.BatchNormalization):
        return [w for w in (layer.gamma, layer.beta) if w is not None]
    return []


def kernel_sparsity(model) -> dict[str, float]:
    """Zeros in a standard-layer (fused or exported) model: over Conv2D/Dense kernels, and over all
    learned parameters (kernels, biases, BatchNorm scales and offsets). Works whether or not the model
    is trainable (the ensemble is not)."""
    zeros_kernel = total_kernel = zeros_all = total_all = 0
    for layer in model.layers:
        for i, w in enumerate(_parameters(layer)):
            value = np.asarray(w)
            zeros = int(np.sum(value == 0))
            zeros_all += zeros
            total_all += value.size
            if i == 0 and isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
                zeros_kernel += zeros
                total_kernel += value.size
    return {
        "kernels": zeros_kernel / max(total_kernel, 1),
        "all_parameters": zeros_all / max(total_all, 1),
        "kernel_params": total_kernel,
        "all_params": total_all,
        "nonzero_params": total_all - zeros_all,
    }


class GlobalPruning(keras.callbacks.Callback):
    """Applies global masks when the schedule says so; masks reach the ensemble at once."""

    def __init__(
        self,
        schedule,
        *,
        structured: bool = False,
        restart_ensemble: bool = True,
        min_layer_density: float = 0.0,
        log_dir: str | None = None,
    ):
        super().__init__()
        self.schedule = schedule
        self.structured = structured
        self.restart_ensemble = restart_ensemble
        self.min_layer_density = min_layer_density
        self.log_dir = log_dir
        self.last_sparsity = 0.0
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        should_prune, sparsity = self.schedule(step)
        if bool(should_prune) and float(sparsity) > 0:
            self.prune(float(sparsity))

    def prune(self, sparsity: float) -> None:
        model = self.model
        layers = model.reparam
        kernels = [np.asarray(layer.fused_kernel()) for layer in layers]
        if self.structured:
            masks = self._channel_masks(model, layers, kernels, sparsity)
        else:
            masks = global_unstructured_masks(kernels, sparsity, self.min_layer_density)
            masks = [mask * np.asarray(layer.mask) for layer, mask in zip(layers, masks, strict=True)]
            # Before anything is changed: a refused prune leaves the model (and the checkpoint) as it was.
            check_layer_densities(layer_densities([la.name for la in layers], masks), sparsity, self.min_layer_density)
        ensemble_layers = {} if model.ensemble is None else {layer.name: layer for layer in model.ensemble.layers}
        for layer, mask in zip(layers, masks, strict=True):
            # Masks only ever shrink: an entry pruned before stays pruned.
            mask = mask * np.asarray(layer.mask)
            layer.mask.assign(mask)
            layer.project_factors()
            if layer.name in ensemble_layers:
                ens = ensemble_layers[layer.name]
                ens.kernel.assign(np.asarray(ens.kernel) * mask)
        if self.structured:
            self._zero_removed_channels(model)
        model.pruned.assign(True)
        if self.restart_ensemble:
            # Members from before the prune belong to a different (dense) network: restart the
            # warm-up, so the next ensemble update copies the pruned model (tau = 0) and averaging
            # starts afresh. Measured on digits: see docs/design_notes.md.
            model.ensemble_updates.assign(0)
        self.last_sparsity = sparsity
        self._log_densities(layers)

    # -- structured: residual groups, and bias / BatchNorm of removed channels ------------------------
    @staticmethod
    def _channel_masks(model, layers, kernels, sparsity):
        from frep_tf.structure import channel_graph

        graph = channel_graph(model.network)
        # The classifier's output channels are the classes: a model output is a frozen group.
        keep = group_channel_keep({layer.name: k for layer, k in zip(layers, kernels, strict=True)}, graph, sparsity)
        return [
            np.broadcast_to(keep[graph.output_group[layer.name]].astype(np.float32), k.shape).copy()
            for layer, k in zip(layers, kernels, strict=True)
        ]

    @staticmethod
    def _zero_removed_channels(model):
        from frep_tf.structure import channel_graph

        graph = channel_graph(model.network)
        zero_removed_channels(model.network, graph)
        if model.ensemble is not None:
            zero_removed_channels(model.ensemble, graph)
        # From now on the train step keeps them at zero (RobustModel._project_pruned_factors).
        model.channels_pruned.assign(True)

    def _log_densities(self, layers) -> None:
        if not self.log_dir:
            return
        import tensorflow as tf

        densities = layer_densities([layer.name for layer in layers], [np.asarray(layer.mask) for layer in layers])
        writer = tf.summary.create_file_writer(self.log_dir)
        # Epochs on the x axis, like the other per-epoch summaries in the same directory.
        with writer.as_default(step=self._epoch):
            for name, d in densities.items():
                tf.summary.scalar(f"kept_fraction/{name}", d["fraction"])
        writer.close()
