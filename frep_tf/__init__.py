"""frep_tf: adversarially robust, extremely sparse networks with FReP, in Keras 3 on TensorFlow."""

__version__ = "0.1.0"
