"""Config validation: each bad value gets one clear error naming the flag and what is allowed."""

import dataclasses

import pytest

from frep_tf.config import Config, ConfigError
from frep_tf.validation import validate


def _cfg(**flat):
    return Config.from_flat(flat)


def test_defaults_are_valid_and_match_the_paper():
    cfg = validate(Config())
    assert (cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay) == (0.1, 0.9, 2e-4)
    assert (cfg.train.epochs, cfg.data.batch_size, cfg.prune.prune_epoch) == (100, 128, 30)
    assert cfg.train.epsilon == pytest.approx(8 / 255) and cfg.step_size == cfg.train.epsilon
    assert cfg.ensemble.ensemble_interval == 100


BAD = [
    (dict(sparsity=1.0), "--sparsity=1.0: must lie in [0, 1)"),
    (dict(sparsity=-0.1), "--sparsity=-0.1"),
    (dict(prune_epoch=100), "--prune_epoch=100: must lie in [0, --epochs=100)"),
    (dict(objective="madry"), "--objective=madry: allowed values are sre, fgsm, pgd, trades, mart, natural"),
    (dict(parameterization="lora"), "--parameterization=lora"),
    (dict(arch="resnet101"), "--arch=resnet101: allowed values are vgg16"),
    (dict(epsilon=2.0), "--epsilon=2.0"),
    (dict(epsilon=0.0), "--epsilon=0.0: must be > 0 for --objective=sre"),
    (dict(epochs=0), "--epochs=0"),
    (dict(batch_size=0), "--batch_size=0"),
    (dict(lr=0.0), "--lr=0.0"),
    (dict(momentum=1.0), "--momentum=1.0"),
    (dict(width=0.0), "--width=0.0"),
    (dict(ensemble_decay=1.0), "--ensemble_decay=1.0"),
    (dict(ensemble_interval=0), "--ensemble_interval=0"),
    (dict(eval_attacks="pgd,cw"), "--eval_attacks=pgd,cw: a comma-separated subset of clean, fgsm"),
    (dict(export="keras,onnx"), "--export=keras,onnx"),
    (dict(val_size=1.5), "--val_size=1.5"),
    (dict(mode="evaluate"), "--model=''"),
    (dict(mode="serve"), "--mode=serve"),
    (dict(prune_schedule="cubic"), "--prune_schedule=cubic"),
    (dict(prune_schedule="gradual", prune_end_epoch=20), "--prune_end_epoch=20"),
    (dict(attack_bn="frozen"), "--attack_bn=frozen"),
    (dict(verbose=3), "--verbose=3"),
    (dict(pgd_steps=0), "--pgd_steps=0"),
    (dict(sparsity=0.99, min_layer_density=0.02), "--min_layer_density=0.02"),
    (dict(min_layer_density=-0.1), "--min_layer_density=-0.1"),
    (dict(structured=True, sparsity=0.5, min_layer_density=0.1), "--min_layer_density=0.1"),
    (dict(jit_compile=True, distribution="mirrored"), "--jit_compile=True: not with --distribution=mirrored"),
]


@pytest.mark.parametrize("flat,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_values_are_refused_with_the_flag_named(flat, message):
    with pytest.raises(ConfigError) as info:
        validate(_cfg(**flat))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_sparsity_zero_needs_no_prune_epoch():
    validate(_cfg(sparsity=0.0, prune_epoch=500))


def test_unknown_setting_is_refused():
    with pytest.raises(ConfigError, match="unknown setting"):
        Config.from_flat({"learning_rate": 0.1})


def test_flat_round_trip():
    cfg = _cfg(arch="small_cnn", sparsity=0.5)
    assert Config.from_flat(cfg.flat()) == cfg
    assert dataclasses.asdict(cfg)["model"]["arch"] == "small_cnn"


def test_attack_names_match_the_evaluation_suite():
    from frep_tf import evaluation
    from frep_tf.config import EVAL_ATTACKS

    assert set(EVAL_ATTACKS) == set(evaluation.ATTACKS)


CONFIG_DIR = __import__("pathlib").Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.cfg")), ids=lambda p: p.name)
def test_shipped_flagfiles_parse_and_validate(path):
    from absl import flags as absl_flags

    import flags

    fv = absl_flags.FlagValues()
    flags.define_all(fv)
    fv(["main.py", f"--flagfile={path}"])
    cfg = validate(flags.config_from_flags(fv))
    assert f"--flagfile=configs/{path.name}" in path.read_text()  # the file names its own command
    assert cfg.prune.sparsity > 0


def test_docs_document_every_flag():
    readme = (CONFIG_DIR.parent / "docs" / "flags.md").read_text()
    from frep_tf.config import SECTIONS

    missing = [f.name for k in SECTIONS.values() for f in dataclasses.fields(k) if f"`--{f.name}`" not in readme]
    assert not missing, missing
