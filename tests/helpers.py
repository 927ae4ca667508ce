"""What several test files (and benchmarks/kill_resume.py) share that the library does not need: the flags of
the short runs they start, and a model built and compiled for its method's first stage."""

from __future__ import annotations

# A short deterministic quickstart run (4 epochs, pruning at 2) for the kill-and-resume tests and
# benchmarks/kill_resume.py: long enough to have every kill point, short enough to run many times.
# Pruned to 99 % after 2 epochs, conv3 would keep 4 of its 73,728 weights, which pruning refuses:
# every layer keeps 0.1 %.
QUICK_RUN_FLAGS = (
    "--flagfile=configs/quickstart.cfg",
    "--epochs=4",
    "--prune_epoch=2",
    "--min_layer_density=0.001",
    "--val_pgd_steps=2",
    "--eval_pgd_steps=5",
    "--ensemble_interval=5",
    "--deterministic",
    "--verbose=2",
)

# A tinier dense run (no pruning, 2 epochs, clean evaluation only) for the failure-injection and
# multi-worker tests, which need a complete run, not its numbers. Add --verbose=... as needed.
TINY_DENSE_RUN_FLAGS = (
    "--dataset=digits",
    "--arch=small_cnn",
    "--width=0.25",
    "--sparsity=0",
    "--epochs=2",
    "--epsilon=0.1",
    "--batch_size=64",
    "--val_pgd_steps=1",
    "--val_samples=32",
    "--eval_attacks=clean",
    "--export=keras",
)


def build_and_compile(cfg, info, steps_per_epoch: int):
    """The model ready for its method's first stage (optimizer built), as a run builds it: (model, lr decay
    steps)."""
    from frep_tf.methods import stages as stages_lib
    from frep_tf.run.setup import build_robust_model

    model = build_robust_model(cfg, info)
    first = stages_lib.plan(cfg)[0]
    stages_lib.configure(first, model, cfg)
    return model, stages_lib.compile_stage(first, model, steps_per_epoch, cfg)
