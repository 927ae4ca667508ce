"""L-inf adversarial attacks as pure functions of a model callable ``model_fn(x) -> logits``.

Inputs are float32 in [0, 1], labels int class ids; every attack returns inputs of the same shape
within eps of x and inside [0, 1], and is deterministic for a given seed. One module per attack,
each attacking one batch (e.g. ``pgd.pgd(model_fn, x, y, eps=8/255, steps=50, step_size=2/255)``);
`autoattack` and `frep_tf.evaluation` run them over datasets, batched and graph-compiled.
"""

from frep_tf.attacks import apgd, autoattack, checks, common, fab, fgsm, pgd, square
from frep_tf.attacks.common import NotDifferentiableError

__all__ = ["NotDifferentiableError", "apgd", "autoattack", "checks", "common", "fab", "fgsm", "pgd", "square"]
