"""Tiny configs of every family flavour and random (non-trivial) parameters for model tests."""

import jax
import numpy as np

from gkd_jax.models import (FULL, SLIDING, ModelConfig, RopeScaling, build, logical_axes,
                            param_shapes)

_BASE = dict(vocab_size=48, num_layers=2, embed_dim=32, mlp_dim=48, num_heads=4, num_kv_heads=2,
             head_dim=8)

FAMILIES = {
    # Llama 3.x: SwiGLU, tied, llama3 rope scaling whose wavelength bands all occur at head_dim 8.
    "llama": dict(model_type="llama", rope_theta=10000.0, norm_eps=1e-5,
                  rope_scaling=RopeScaling("llama3", factor=8.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0,
                                           original_max_position_embeddings=64)),
    # Qwen 2: q/k/v biases, untied head.
    "qwen2": dict(model_type="qwen2", qkv_bias=True, tie_embeddings=False, rope_theta=1e6),
    # Qwen 3: q/k RMSNorm over head_dim, MQA-ish grouping.
    "qwen3": dict(model_type="qwen3", qk_norm=True, num_kv_heads=1, rope_theta=1e6),
    # Gemma 2: GeGLU, (1+w) norms, sandwich norms, both soft-caps (small so tanh bites),
    # query_pre_attn_scalar != head_dim, sqrt(d) embedding scale, sliding layers (window 4).
    "gemma2": dict(model_type="gemma2", activation="gelu_tanh",
                   norm_scale_plus_one=True, post_attn_norm=True, post_mlp_norm=True,
                   scale_embeddings=True, query_pre_attn_scalar=12.0, attn_logit_softcap=2.0,
                   final_logit_softcap=1.5, sliding_window=4,
                   layer_types=(SLIDING, FULL)),
    # Gemma 3: + q/k (1+w) norms, local/global rope bases, linear scaling on global layers only.
    "gemma3": dict(model_type="gemma3_text", num_layers=3, activation="gelu_tanh",
                   norm_scale_plus_one=True, post_attn_norm=True, post_mlp_norm=True,
                   scale_embeddings=True, qk_norm=True, query_pre_attn_scalar=8.0,
                   rope_theta=1e6, rope_local_theta=10000.0,
                   rope_scaling=RopeScaling("linear", factor=8.0), sliding_window=3,
                   layer_types=(SLIDING, SLIDING, FULL)),
}


def tiny_config(family: str, **overrides) -> ModelConfig:
  kw = dict(_BASE)
  kw.update(FAMILIES[family])
  kw.update(overrides)
  return ModelConfig(**kw)


def random_params(model, seed: int = 0, scale: float = 0.3):
  """Params with O(1) activations: norms away from their identity value, random biases."""
  rng = np.random.default_rng(seed)
  plus_one = model.config.norm_scale_plus_one

  def leaf(path, sds):
    name = jax.tree_util.keystr(path)
    x = rng.standard_normal(sds.shape)
    if "norm" in name:
      x = 0.3 * x + (0.0 if plus_one else 1.0)
    elif "embed" in name and "lm_head" not in name:
      x = x * 1.0
    elif "bias" in name:
      x = 0.5 * x
    else:
      x = scale * x
    return np.asarray(x, sds.dtype)

  return jax.tree_util.tree_map_with_path(leaf, param_shapes(model))


def tiny(family: str, dtype=np.float32, seed: int = 0, **overrides):
  model = build(tiny_config(family, **overrides), dtype)
  return model, jax.tree.map(jax.numpy.asarray, random_params(model, seed))


TP_FSDP_RULES = (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
                 ("kv_heads", "tensor"), ("vocab", "tensor"), ("head_dim", None))


def sharded_2x2x2(model, params):
  """(mesh, params) with params placed on a ("data","fsdp","tensor") = 2x2x2 mesh of fake devices
  by their logical axes, through the trainer's own sharding rules."""
  from gkd_jax import sharding  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])
  shardings = sharding.tree_shardings(mesh, logical_axes(model), TP_FSDP_RULES,
                                      shapes=param_shapes(model))
  return mesh, jax.device_put(params, shardings)
