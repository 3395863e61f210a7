"""Rotary position embeddings, as transformers computes them (rotate-half layout).

Global (full-attention) layers use `rope_theta` and `rope_scaling`; sliding layers use
`rope_local_theta` (Gemma 3's `rope_local_base_freq`) without scaling when it is set, otherwise the
same frequencies as the global layers.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from gkd_jax.models.config import ModelConfig, RopeScaling


def _llama3_scale(inv_freq: np.ndarray, s: RopeScaling) -> np.ndarray:
  """transformers `_compute_llama3_parameters`, in float32 like torch."""
  f32 = np.float32
  factor, low, high = f32(s.factor), f32(s.low_freq_factor), f32(s.high_freq_factor)
  old = f32(s.original_max_position_embeddings)
  low_wavelen, high_wavelen = old / low, old / high
  wavelen = f32(2 * math.pi) / inv_freq
  scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq).astype(f32)
  smooth = ((old / wavelen - low) / (high - low)).astype(f32)
  smoothed = ((1 - smooth) * scaled / factor + smooth * scaled).astype(f32)
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(f32)


def inv_freq(cfg: ModelConfig, sliding: bool) -> np.ndarray:
  """Inverse frequencies [head_dim // 2] (float32) for a global or a sliding layer."""
  local = sliding and cfg.rope_local_theta is not None
  theta = cfg.rope_local_theta if local else cfg.rope_theta
  dim = cfg.head_dim
  exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  freq = (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)
  scaling = None if local else cfg.rope_scaling
  if scaling is not None:
    if scaling.rope_type == "linear":
      freq = (freq / np.float32(scaling.factor)).astype(np.float32)
    elif scaling.rope_type == "llama3":
      freq = _llama3_scale(freq, scaling)
    else:
      raise ValueError(f"rope_scaling.rope_type={scaling.rope_type!r} must be 'linear' or 'llama3'")
  return freq


def cos_sin(freq: np.ndarray, positions_BxT: jnp.ndarray, dtype) -> tuple[jnp.ndarray, jnp.ndarray]:
  """cos, sin [B,T,head_dim] (halves repeated), computed in float32 then cast to `dtype`."""
  angles = positions_BxT.astype(jnp.float32)[..., None] * jnp.asarray(freq)[None, None, :]
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply(x_BxNxTxH: jnp.ndarray, cos_BxTxH: jnp.ndarray, sin_BxTxH: jnp.ndarray) -> jnp.ndarray:
  """x * cos + rotate_half(x) * sin, with heads on axis 1."""
  half = x_BxNxTxH.shape[-1] // 2
  x1, x2 = x_BxNxTxH[..., :half], x_BxNxTxH[..., half:]
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x_BxNxTxH * cos_BxTxH[:, None] + rotated * sin_BxTxH[:, None]
