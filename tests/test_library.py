"""The library API on models frep_tf did not build (docs/library.md): reparameterize keeps what the model
computes, fuse gives back the user's own layers, bad arguments get one-line errors, `import frep_tf`
stays light, and the package metadata matches requirements.txt."""

import ast
import pathlib
import subprocess
import sys
import tomllib

import keras
import numpy as np
import pytest

import frep_tf
from frep_tf.layers import PARAMETERIZATIONS, ReparamConv2D, ReparamDense, reparam_layers

ROOT = pathlib.Path(__file__).resolve().parent.parent
L = keras.layers


def functional():
    """Residual add, concatenation, depthwise, dilated and grouped convolutions, activations inside layers."""
    inputs = keras.Input((8, 8, 3), name="image")
    a = L.Conv2D(8, 3, padding="same", activation="relu", name="a")(inputs)
    b = L.DepthwiseConv2D(3, padding="same", name="dw")(a)
    b = L.BatchNormalization(name="bn")(b)
    b = L.Conv2D(8, 3, padding="same", dilation_rate=2, use_bias=False, name="dilated")(b)
    c = L.Add(name="add")([a, b])
    d = L.Conv2D(4, 1, groups=2, name="grouped")(L.Concatenate(name="cat")([c, a]))
    x = L.GlobalAveragePooling2D(name="gap")(d)
    x = L.Dense(6, activation="tanh", kernel_initializer="he_normal", name="hidden")(x)
    return keras.Model(inputs, L.Dense(5, name="logits")(x), name="functional")


def sequential():
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(6, 3, strides=2, activation="relu", name="conv"),
            L.BatchNormalization(name="bn"),
            L.Flatten(name="flat"),
            L.Dense(5, name="logits"),
        ],
        name="sequential",
    )


def nested():
    """A Sequential and a functional model inside a functional one."""
    block = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(4, 3, activation="relu", name="inner_conv")], name="block"
    )
    inner_in = keras.Input((6, 6, 4))
    head = keras.Model(inner_in, L.Dense(5, name="inner_dense")(L.GlobalMaxPooling2D()(inner_in)), name="head")
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, head(block(inputs)), name="outer")


MODELS = {"functional": functional, "sequential": sequential, "nested": nested}


def _randomize(model, seed=0):
    """Non-trivial weights everywhere (BatchNorm statistics too), scaled so that no activation saturates,
    so that unchanged outputs mean something."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _randomize(layer, seed + 1)
        elif isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)]
            )
        elif layer.weights:
            kernel, *bias = layer.get_weights()
            # A depthwise kernel (kh, kw, channels, 1) sums kh * kw inputs per output.
            fan_in = int(np.prod(kernel.shape[:2] if isinstance(layer, L.DepthwiseConv2D) else kernel.shape[:-1]))
            layer.set_weights(
                [rng.normal(0, 1.5 / np.sqrt(fan_in), kernel.shape), *(rng.normal(0, 0.1, b.shape) for b in bias)]
            )


X = np.random.default_rng(1).random((4, 8, 8, 3)).astype("float32")


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_reparameterized_model_computes_what_the_model_computes(kind, parameterization):
    keras.utils.set_random_seed(0)
    model = MODELS[kind]()
    _randomize(model)
    reference = np.asarray(model(X, training=False))
    clone = frep_tf.reparameterize(model, parameterization, verbose=False)
    factored = reparam_layers(clone)
    assert len(factored) == {"functional": 5, "sequential": 2, "nested": 2}[kind]
    assert all(layer.parameterization == parameterization for layer in factored)
    assert not any(type(layer) in (L.Conv2D, L.Dense) for layer in clone.layers)
    got = np.asarray(clone(X, training=False))
    scale = np.abs(reference).max()
    assert np.ptp(reference, axis=0).max() > 0.1 * scale  # the outputs depend on the inputs
    np.testing.assert_allclose(got, reference, atol=1e-5 * scale, rtol=1e-5)
    # The original model is untouched (its layers are not shared with the clone).
    assert not {id(w) for w in model.weights} & {id(w) for w in clone.weights}


def test_factors_are_the_square_roots_of_the_kernel():
    model = sequential()
    _randomize(model)
    conv = frep_tf.reparameterize(model, "hadamard", verbose=False).get_layer("conv")
    kernel = model.get_layer("conv").kernel.numpy()
    np.testing.assert_allclose(conv.factor_b.numpy(), np.sqrt(np.abs(kernel)), rtol=1e-6)
    np.testing.assert_allclose(conv.factor_a.numpy(), np.sign(kernel) * np.sqrt(np.abs(kernel)), rtol=1e-6)
    channel = frep_tf.reparameterize(model, "channel", verbose=False).get_layer("conv")
    np.testing.assert_array_equal(channel.mix.numpy(), np.eye(6))


def test_keep_weights_false_draws_fresh_weights_from_factor_init():
    model = sequential()
    clone = frep_tf.reparameterize(model, "hadamard", "ones", keep_weights=False, verbose=False)
    np.testing.assert_array_equal(clone.get_layer("conv").factor_b.numpy(), 1.0)
    assert not np.allclose(np.asarray(clone(X)), np.asarray(model(X)))


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_fuse_gives_back_the_users_own_layers_with_the_masked_kernels(kind):
    model = MODELS[kind]()
    _randomize(model)
    clone = frep_tf.reparameterize(model, "hadamard", verbose=False)
    rng = np.random.default_rng(3)
    for layer in reparam_layers(clone):
        layer.mask.assign((rng.random(layer.mask.shape) < 0.5).astype("float32"))
    fused = frep_tf.fuse(clone)
    np.testing.assert_allclose(np.asarray(fused(X)), np.asarray(clone(X)), atol=1e-5)
    originals = {layer.name: layer for layer in _flat_layers(model)}
    for layer in fused.layers:
        if type(layer) in (L.Conv2D, L.Dense):
            assert layer.get_config() == originals[layer.name].get_config()  # activation, dilation, groups, ...
            mask = clone.get_layer(layer.name).mask.numpy()
            np.testing.assert_array_equal(layer.kernel.numpy() == 0, mask == 0)
        assert not isinstance(layer, (ReparamConv2D, ReparamDense))


def _flat_layers(model):
    return [x for layer in model.layers for x in (_flat_layers(layer) if isinstance(layer, keras.Model) else [layer])]


def _exact_square_roots(model):
    """Every Conv2D/Dense kernel entry rounded to sign * q**2, q of 8 significant bits: q**2 and its square
    root are exact in float32, so the factors sign(W) sqrt|W| and sqrt|W| multiply back to W bit for bit.
    (Otherwise the rounding of that product, amplified by MobileNetV2's 52 random layers, moves the logits
    by 1-3e-5 of their scale, the same in the original model with its kernels so rounded: measured.)"""
    for layer in model.layers:
        if type(layer) in (L.Conv2D, L.Dense):
            kernel = layer.kernel.numpy()
            mantissa, exponent = np.frexp(np.sqrt(np.abs(kernel)))
            root = np.ldexp(np.round(mantissa * 256) / 256, exponent)
            layer.kernel.assign(np.sign(kernel) * np.square(root))
            np.testing.assert_array_equal(np.sqrt(np.abs(layer.kernel.numpy())), root)


def test_mobilenetv2_comes_back_from_reparameterize_and_fuse():
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10, classifier_activation=None
    )
    _randomize(model)  # BatchNorm statistics too; depthwise kernels scaled by their own fan-in
    _exact_square_roots(model)
    x = np.random.default_rng(1).random((4, 32, 32, 3)).astype("float32")
    reference = np.asarray(model(x, training=False))
    scale = np.abs(reference).max()
    assert np.ptp(reference, axis=0).max() > 0.1 * scale  # the outputs depend on the inputs
    clone = frep_tf.reparameterize(model, verbose=False)
    assert len(reparam_layers(clone)) == 36  # 35 Conv2D and the classifier; 17 DepthwiseConv2D are kept
    fused = frep_tf.fuse(clone)
    for got in (clone(x, training=False), fused(x, training=False)):
        np.testing.assert_allclose(np.asarray(got), reference, atol=1e-5 * scale, rtol=1e-5)
    originals = {layer.name: layer for layer in model.layers}
    assert len(fused.layers) == len(model.layers)
    for layer in fused.layers[1:]:
        original = originals[layer.name]
        assert type(layer) is type(original) and layer.get_config() == original.get_config(), layer.name
        for got, want in zip(layer.weights, original.weights, strict=True):
            np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_layers_that_are_not_factored_are_listed_in_one_line(capsys):
    clone = frep_tf.reparameterize(functional())
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert "5 Conv2D/Dense layers factored (hadamard)" in lines[0]
    assert "dw (DepthwiseConv2D)" in lines[0] and "bn" not in lines[0].split("kept as they are:")[1]
    assert type(clone.get_layer("dw")) is L.DepthwiseConv2D


def test_bad_models_and_arguments_get_one_line_errors():
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    cases = [
        (lambda: frep_tf.reparameterize(sequential(), "hadamrd"), "Unknown parameterization: 'hadamrd'. Allowed:"),
        (lambda: frep_tf.reparameterize(sequential(), factor_init="zeros"), "Unknown factor_init"),
        (lambda: frep_tf.reparameterize(Subclassed()), "subclassed keras.Model"),
        (lambda: frep_tf.reparameterize(keras.Sequential([L.Dense(3)])), "is not built"),
        (
            lambda: frep_tf.reparameterize(keras.Sequential([keras.Input((3,)), L.Dense(3, activation="softmax")])),
            "logits",
        ),
        (
            lambda: frep_tf.reparameterize(frep_tf.reparameterize(sequential(), verbose=False)),
            "reparameterized already",
        ),
        (lambda: frep_tf.callbacks(sparsity=1.5), "`sparsity` must be None (no pruning) or lie in [0, 1)"),
        (lambda: frep_tf.callbacks(structured=True), "must be given with structured=True"),
        (lambda: frep_tf.callbacks(sparsity=0.9, schedule="cubic"), "`schedule` must be one of oneshot, gradual"),
        (lambda: frep_tf.callbacks(ensemble_interval=0), "`ensemble_interval` must be a positive integer"),
        (lambda: frep_tf.callbacks(validation_data=np.zeros((4, 3))), "`validation_data` must be None or a pair"),
        (
            lambda: frep_tf.callbacks(validation_data=(np.zeros((4, 3)), np.zeros(5))),
            "y integer labels of the same length",
        ),
        (lambda: frep_tf.callbacks(val_pgd_steps=0), "`val_pgd_steps` must be a positive integer"),
        (lambda: frep_tf.export(np.zeros(3), "/nonexistent"), "expected a keras.Model"),
    ]
    for make, expected in cases:
        with pytest.raises((ValueError, TypeError)) as info:
            make()
        message = str(info.value)
        assert expected in message and "\n" not in message, message


def test_import_frep_tf_does_not_import_tensorflow():
    code = (
        "import sys, frep_tf; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'heavy import'; "
        "print(' '.join(sorted(frep_tf.__all__)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == sorted(
        ["RobustModel", "__version__", "attacks", "callbacks", "evaluate", "export", "fuse", "reparameterize"]
    )


def test_lazy_names_resolve_and_fuse_and_export_stay_modules():
    import frep_tf.evaluation
    import frep_tf.export as export_module
    import frep_tf.fuse as fuse_module

    assert frep_tf.fuse is fuse_module and callable(frep_tf.fuse) and frep_tf.fuse.copy_fused_weights
    assert frep_tf.export is export_module and callable(frep_tf.export) and frep_tf.export.FILENAMES
    assert frep_tf.evaluate.evaluate_model is frep_tf.evaluation.evaluate_model
    assert frep_tf.attacks.pgd.pgd and frep_tf.RobustModel.__name__ == "RobustModel"
    with pytest.raises(AttributeError):
        frep_tf.no_such_name  # noqa: B018


def test_package_metadata_matches_requirements_txt():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    extras = project["optional-dependencies"]
    declared = project["dependencies"] + extras["test"] + extras["dev"]
    assert sorted(declared) == sorted(lines)
    assert project["name"] == "frep_tf" and project["dynamic"] == ["version"]
    tree = ast.parse((ROOT / "frep_tf" / "__init__.py").read_text())
    versions = [n.value.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "__version__"]
    assert versions == [frep_tf.__version__]
