"""The paper's baselines as mechanisms, one module per method (docs/methods.md).

- `masks`:       exact top-k masks and applying them to reparameterized layers (shared).
- `lwm`:         one global magnitude threshold over all conv and dense kernels.
- `admm`:        ADMM state (Z, U, rho), its updates, its augmented loss term, hard pruning.
- `hydra`:       importance scores, exact per-layer top-k with a straight-through gradient.
- `mad`:         soft masks, block-wise K-FAC statistics and MAD's second-order saliency.
- `sparse_init`: plain kernels initialised as the product of two independent draws.

Stages (which of these run when, with which epochs) are wired by the pipeline, not here.
"""
