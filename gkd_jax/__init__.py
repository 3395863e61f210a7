"""gkd_jax: on-policy knowledge distillation of language models in JAX/Flax."""

__version__ = "0.1.0"
