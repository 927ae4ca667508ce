"""Training methods, one module each (docs/methods.md). A method is a `base.Method`: its stages, the
state it keeps in the model, what each stage does when it begins, its callbacks and its train-step
hook; `registry` maps --method names to them, and `stages` is the machinery every method shares.

- `frep`:        FReP / Ori / FReP-CH (one stage, global prune inside it) and the post-hoc ablation.
- `lwm`:         one global magnitude threshold over all conv and dense kernels during training.
- `admm`:        ADMM state (Z, U, rho), its updates, its augmented loss term, hard pruning.
- `hydra`:       importance scores, exact per-layer top-k with a straight-through gradient.
- `harp`:        HYDRA's scores plus learnt per-layer rates under a global budget (HARP).
- `mad`:         soft masks, block-wise K-FAC statistics and MAD's second-order saliency.
- `lottery`:     adversarial lottery tickets (rewind, rounds) and weight inheritance.
- `iwi`:         inverse weights inheritance: a small sparse network grown into the large one.
- `masks`:       exact top-k masks and applying them to reparameterized layers (shared).
- `sparse_init`: plain kernels initialised as the product of two independent draws.
"""
