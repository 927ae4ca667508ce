"""GlobalPruning ranks the fused kernel the layer applies, not one of its factors (paper III-D, Eq. 17).

The factors are built from a chosen fused kernel K so that ranking |A|, |B| or |K| keeps different
entries (hadamard: K = A * B; channel: K = B contracted with `mix` over the output-channel axis), and,
for structured pruning, so that the L2 norm of a channel (Eq. 17) and its L1 norm keep different
channels. The callback is driven as training drives it (frep_tf.methods.stages.make_callbacks): a
TF-MOT one-shot schedule, inside `fit`. The expected masks are computed here from K alone.
"""

import keras
import numpy as np
import pytest

from frep_tf.layers import ReparamConv2D, ReparamDense
from frep_tf.training.pruning import GlobalPruning, make_schedule
from frep_tf.training.robust_model import RobustModel

UNSTRUCTURED_SPARSITY = 0.6  # keeps round(0.4 * 40) = 16 of the 40 kernel entries
STRUCTURED_SPARSITY = 0.5  # keeps 4 of the 8 prunable output channels (c1's and c2's; the classes stay)


def _network(parameterization):
    """(2, 2, 1) -> conv 2x2 valid (4) -> relu -> conv 1x1 (4) -> relu -> global pool -> dense (2).
    Every output channel of c1 and c2 has a fan-in of 4: kernels (2, 2, 1, 4), (1, 1, 4, 4), (4, 2)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((2, 2, 1))
    h = ReparamConv2D(4, 2, padding="valid", parameterization=parameterization, name="c1")(inputs)
    h = keras.layers.ReLU(name="r1")(h)
    h = ReparamConv2D(4, 1, parameterization=parameterization, name="c2")(h)
    h = keras.layers.ReLU(name="r2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inputs, ReparamDense(2, parameterization=parameterization, name="head")(h))


SHAPES = {"c1": (2, 2, 1, 4), "c2": (1, 1, 4, 4), "head": (4, 2)}


def _unstructured_kernels(rng):
    """Fused kernels whose 40 entries have distinct magnitudes 0.1, 0.2, ..., 4.0 (random places and signs)."""
    magnitudes = rng.permutation(np.arange(1, 41) / 10.0)
    signs = rng.choice([-1.0, 1.0], size=40)
    flat, out, start = magnitudes * signs, {}, 0
    for name, shape in SHAPES.items():
        n = int(np.prod(shape))
        out[name] = flat[start : start + n].reshape(shape)
        start += n
    return out


def _structured_kernels(rng):
    """c1 and c2 each get two "spiky" output channels (one entry s in 3.0..3.6, the others 0.05: L2 ~ s,
    L1 ~ s + 0.15) and two "flat" ones (four entries +-f, f in 1.30..1.45: L2 = 2f <= 2.9, L1 = 4f >= 5.2).
    By L2 the four spiky channels are the largest; by L1 the four flat ones."""
    spiky = iter([3.0, 3.2, 3.4, 3.6])
    flat = iter([1.30, 1.35, 1.40, 1.45])
    out = {}
    for name, kind in (("c1", "sfsf"), ("c2", "fsfs")):
        columns = []
        for k in kind:
            if k == "s":
                col = np.full(4, 0.05)
                col[rng.integers(4)] = next(spiky)
            else:
                col = np.full(4, next(flat))
            columns.append(col * rng.choice([-1.0, 1.0], size=4))
        out[name] = np.stack(columns, axis=-1).reshape(SHAPES[name])
    out["head"] = rng.normal(size=SHAPES["head"])
    return out


def _factors(parameterization, kernels, rng):
    """Factors whose fused kernel is `kernels`: {layer: {variable name: value}}."""
    out = {}
    for name, k in kernels.items():
        if parameterization == "hadamard":
            # |A| spread over [0.2, 5] independently of K: ranking A (or B = K / A) is not ranking K.
            a = rng.uniform(0.2, 5.0, size=k.shape) * rng.choice([-1.0, 1.0], size=k.shape)
            out[name] = {"factor_a": a, "factor_b": k / a}
        else:
            # kernel[..., d] = sum_e B[..., e] mix[e, d], so B = K mix^-1 over the output-channel axis.
            d = k.shape[-1]
            mix = rng.normal(size=(d, d))
            assert np.linalg.cond(mix) < 20  # a well-conditioned inverse: B is K to float32 precision
            b = np.einsum("...d,de->...e", k, np.linalg.inv(mix))
            np.testing.assert_allclose(np.einsum("...e,ed->...d", b, mix), k, atol=1e-9)
            out[name] = {"factor_b": b, "mix": mix}
    return out


def _top_k_masks(scores: dict, keep: int) -> dict:
    """1 on the `keep` largest scores over all layers together (the scores are distinct)."""
    threshold = np.sort(np.concatenate([s.ravel() for s in scores.values()]))[-keep]
    return {name: (s >= threshold).astype(np.float32) for name, s in scores.items()}


def _channel_norms(kernel, order):
    return np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), ord=order, axis=0)


def _structured_masks(kernels, order):
    """Eq. 17 with the given norm: the 4 best output channels of c1 and c2 together; the head keeps all."""
    norms = {name: _channel_norms(kernels[name], order) for name in ("c1", "c2")}
    keep = _top_k_masks(norms, keep=4)
    # Each layer keeps some channel anyway, so the callback's one-channel-per-layer floor plays no part.
    assert all(m.sum() >= 1 for m in keep.values())
    masks = {name: np.broadcast_to(keep[name], SHAPES[name]).astype(np.float32) for name in ("c1", "c2")}
    masks["head"] = np.ones(SHAPES["head"], np.float32)
    return masks


def _expected_and_wrong_rankings(parameterization, structured, kernels, factors):
    """The masks ranking K gives, and those ranking each factor alone would give (all must differ)."""
    candidates = {"fused kernel": kernels}
    for var in ("factor_a", "factor_b") if parameterization == "hadamard" else ("factor_b",):
        candidates[var] = {name: factors[name][var] for name in kernels}
    if structured:
        masks = {what: _structured_masks(k, order=2) for what, k in candidates.items()}
        masks["L1 norm of the fused kernel"] = _structured_masks(kernels, order=1)
    else:
        keep = round((1 - UNSTRUCTURED_SPARSITY) * 40)
        masks = {what: _top_k_masks({n: np.abs(v) for n, v in k.items()}, keep) for what, k in candidates.items()}
    expected = masks.pop("fused kernel")
    for what, wrong in masks.items():
        differs = any(not np.array_equal(wrong[n], expected[n]) for n in expected)
        assert differs, f"ranking the {what} keeps what ranking the fused kernel does: the test could not fail"
    return expected


@pytest.mark.parametrize("structured", [False, True], ids=["unstructured", "structured"])
@pytest.mark.parametrize("parameterization", ["hadamard", "channel"])
def test_pruning_masks_follow_the_fused_kernel(parameterization, structured):
    rng = np.random.default_rng(3)
    kernels = (_structured_kernels if structured else _unstructured_kernels)(rng)
    factors = _factors(parameterization, kernels, rng)
    expected = _expected_and_wrong_rankings(parameterization, structured, kernels, factors)

    net = _network(parameterization)
    for name, values in factors.items():
        layer = net.get_layer(name)
        for var, value in values.items():
            getattr(layer, var).assign(value.astype("float32"))
        np.testing.assert_allclose(np.asarray(layer.fused_kernel()), kernels[name], rtol=1e-5, atol=1e-5)
    model = RobustModel(net, objective="natural", seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    # As stages.make_callbacks builds it, with --prune_epoch=0: one-shot at step 0, before any update.
    sparsity = STRUCTURED_SPARSITY if structured else UNSTRUCTURED_SPARSITY
    pruning = GlobalPruning(
        make_schedule("oneshot", sparsity, begin_step=0, end_step=0, frequency=1), structured=structured
    )
    rng_data = np.random.default_rng(0)
    x, y = rng_data.random((4, 2, 2, 1)).astype("float32"), rng_data.integers(0, 2, 4)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[pruning])
    assert bool(model.pruned.numpy()) and pruning.last_sparsity == pytest.approx(sparsity)

    for name, mask in expected.items():
        np.testing.assert_array_equal(net.get_layer(name).mask.numpy(), mask, err_msg=name)
        # The ensemble (what is evaluated and exported) is pruned the same way.
        assert np.all(model.ensemble.get_layer(name).kernel.numpy()[mask == 0] == 0), name
