"""Architecture zoo and registry."""

from frep_tf.models.zoo import ARCHITECTURES, build_model

__all__ = ["ARCHITECTURES", "build_model"]
