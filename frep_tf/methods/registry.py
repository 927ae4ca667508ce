"""Every method by its --method name: adding a method is its module and one line here."""

from __future__ import annotations

from frep_tf.methods.admm import ADMM
from frep_tf.methods.base import Method
from frep_tf.methods.frep import FReP, Posthoc
from frep_tf.methods.harp import HARP
from frep_tf.methods.hydra import HYDRA
from frep_tf.methods.iwi import IWI
from frep_tf.methods.lottery import Lottery
from frep_tf.methods.lwm import LWM
from frep_tf.methods.mad import MAD

METHODS: dict[str, Method] = {
    m.name: m for m in (FReP(), LWM(), ADMM(), HYDRA(), MAD(), Posthoc(), Lottery(), IWI(), HARP())
}


def get(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"--method={name}: allowed values are {', '.join(METHODS)}")
    return METHODS[name]
