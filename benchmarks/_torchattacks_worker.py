"""Runs torchattacks (an independent PyTorch implementation of the attacks) on an exported model.

Started by benchmarks/independent_attacks.py in its own process, because Keras picks its backend
at import: here KERAS_BACKEND=torch, so the exported model.keras (standard Keras layers only) is
loaded as a torch.nn.Module and nothing of frep_tf or TensorFlow is involved.

    python benchmarks/_torchattacks_worker.py MODEL.keras DATA.npz OUT.npz EPS SEEDS ATTACKS

DATA.npz holds x (N, H, W, C) float32 in [0, 1] and y (N,); OUT.npz gets, per attack and seed,
a boolean array "<attack>/<seed>" (still classified correctly after the attack) and its seconds.
Needs `pip install torch==2.13.0` and `pip install --no-deps torchattacks==3.5.1`.
"""

from __future__ import annotations

import os
import sys
import time

os.environ["KERAS_BACKEND"] = "torch"


def build(torchattacks, model, name, eps, n_classes, seed):
    """The torchattacks attack matching our `name` with the settings of our evaluation."""
    if name == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    if name == "pgd":
        return torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=50, random_start=True)
    if name == "mim":
        return torchattacks.MIFGSM(model, eps=eps, alpha=eps / 4, steps=50, decay=1.0)
    if name == "apgd-ce":
        return torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", rho=0.75, seed=seed)
    if name == "apgd-t":
        return torchattacks.APGDT(model, norm="Linf", eps=eps, steps=100, n_restarts=1, n_classes=n_classes, seed=seed)
    if name == "fab-t":
        return torchattacks.FAB(
            model, norm="Linf", eps=eps, steps=100, n_restarts=1, multi_targeted=True, n_classes=n_classes, seed=seed
        )
    if name == "square":
        # AutoAttack's settings: 5000 queries, p_init 0.8, schedule not rescaled.
        return torchattacks.Square(
            model, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, p_init=0.8, resc_schedule=False, seed=seed
        )
    if name == "autoattack":
        return torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=n_classes, seed=seed)
    raise ValueError(f"unknown attack {name!r}")


def main(argv) -> None:
    model_path, data_path, out_path, eps, seeds, attacks = argv
    eps = float(eps)
    seeds = [int(s) for s in seeds.split(",")]
    import keras
    import numpy as np
    import torch
    import torchattacks

    torch.set_num_threads(os.cpu_count() or 1)
    keras_model = keras.models.load_model(model_path, compile=False)

    class ChannelsFirst(torch.nn.Module):
        """torchattacks works on NCHW tensors; the Keras model takes NHWC."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.permute(0, 2, 3, 1))

    model = ChannelsFirst(keras_model).eval()
    data = np.load(data_path)
    x = torch.tensor(data["x"]).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(data["y"]).long()

    def correct(images):
        with torch.no_grad():
            return (model(images).argmax(1) == y).numpy()

    clean = correct(x)
    n_classes = int(model(x[:1]).shape[-1])
    out = {"clean": clean}
    for name in attacks.split(","):
        for seed in seeds:
            torch.manual_seed(seed)  # PGD's random start draws from the global generator
            start = time.perf_counter()
            x_adv = build(torchattacks, model, name, eps, n_classes, seed)(x, y)
            seconds = time.perf_counter() - start
            x_adv = x_adv.detach()
            if float((x_adv - x).abs().max()) > eps + 1e-6 or float(x_adv.min()) < 0 or float(x_adv.max()) > 1:
                raise SystemExit(f"torchattacks {name} left the eps-ball or [0, 1]")
            out[f"{name}/{seed}"] = clean & correct(x_adv)
            out[f"{name}/{seed}/seconds"] = np.float64(seconds)
            print(f"torchattacks {name} seed {seed}: {out[f'{name}/{seed}'].mean():.4f} ({seconds:.1f} s)", flush=True)
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(sys.argv[1:])
