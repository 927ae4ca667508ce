"""frep_tf: adversarially robust, extremely sparse networks with FReP, in Keras 3 on TensorFlow.

The library API (docs/library.md), imported on first use so that `import frep_tf` stays light (it does
not import TensorFlow):

    frep_tf.reparameterize(model)        any functional / Sequential model, Conv2D and Dense factored
    frep_tf.RobustModel(network, ...)    single-step adversarial training (keras.Model: compile, fit)
    frep_tf.callbacks(sparsity=...)      temporal ensemble and global pruning for `fit`
    frep_tf.fuse(model)                  back to the model's own Conv2D / Dense layers
    frep_tf.export(model, directory)     .keras, SavedModel and TFLite files, each checked
    frep_tf.attacks, frep_tf.evaluate    attacks, and robustness evaluation (evaluate.evaluate_model)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> (module, attribute); attribute None: the module itself (frep_tf.fuse and frep_tf.export are
# callable modules, frep_tf.api.callable_module).
_LAZY = {
    "reparameterize": ("frep_tf.api.reparameterize", "reparameterize"),
    "RobustModel": ("frep_tf.training.robust_model", "RobustModel"),
    "callbacks": ("frep_tf.api.callbacks", "callbacks"),
    "fuse": ("frep_tf.fuse", None),
    "export": ("frep_tf.export", None),
    "attacks": ("frep_tf.attacks", None),
    "evaluate": ("frep_tf.evaluate", None),
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'frep_tf' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
