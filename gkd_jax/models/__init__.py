"""Model configs, the NNX decoder and HuggingFace checkpoint I/O.

  cfg = get_preset("gemma2_2b")                  # or a ModelConfig, or config_from_hf(config.json)
  model = build(cfg, dtype=jnp.bfloat16)         # architecture only (hashable, a jit static arg)
  params = init(model, jax.random.key(0))        # or: model, params = load_pretrained(path)
  logical_axes(model)                            # same tree, PartitionSpec of logical axis names
  build(cfg, scan_layers=True)                   # blocks as one scan over stacked [L,...] params

The params tree layout is documented in `api.py`; `hf.py` maps HuggingFace tensor names onto it.
"""

from gkd_jax.models.config import FULL, SLIDING, ModelConfig, RopeScaling
from gkd_jax.models.api import (
    DTYPES,
    Model,
    build,
    init,
    is_stacked,
    logical_axes,
    num_params,
    param_shapes,
    params_for,
    stack_layers,
    unembedding,
    unstack_layers,
)
from gkd_jax.models.hf import load_pretrained, save_pretrained
from gkd_jax.models.presets import PRESETS, get_preset

__all__ = [
    "DTYPES",
    "FULL",
    "PRESETS",
    "SLIDING",
    "Model",
    "ModelConfig",
    "RopeScaling",
    "build",
    "get_preset",
    "init",
    "is_stacked",
    "load_pretrained",
    "logical_axes",
    "num_params",
    "param_shapes",
    "params_for",
    "save_pretrained",
    "stack_layers",
    "unembedding",
    "unstack_layers",
]
