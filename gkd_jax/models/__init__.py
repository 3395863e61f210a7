"""Model configs, the NNX decoder and HuggingFace checkpoint I/O."""

from gkd_jax.models.config import FULL, SLIDING, ModelConfig, RopeScaling
