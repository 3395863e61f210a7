"""score(): next-token logits (or final-norm hidden states) for given token sequences."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from gkd_jax.models.api import Model, Params


def positions_from_mask(mask_BxT: jax.Array) -> jax.Array:
  """RoPE positions: the number of valid tokens before each one (0 for leading padding)."""
  return jnp.maximum(jnp.cumsum(mask_BxT.astype(jnp.int32), axis=-1) - 1, 0)


def attention_masks(model: Model, mask_BxT: jax.Array) -> dict:
  """{False: full mask, True: sliding mask}, bool [B,T,T], True where query t may see key s.

  A key is visible when it is a valid (mask=1) token at or before the query; on sliding layers
  also when q_pos - k_pos < sliding_window (positions count valid tokens only, so with left or
  no padding this is exactly transformers' `q_idx - kv_idx < sliding_window`).
  """
  valid = mask_BxT.astype(bool)
  T = mask_BxT.shape[-1]
  causal = jnp.tril(jnp.ones((T, T), bool))
  full = causal[None] & valid[:, None, :]
  masks = {False: full}
  if any(model.config.is_sliding):
    pos = positions_from_mask(mask_BxT)
    near = (pos[:, :, None] - pos[:, None, :]) < model.config.sliding_window
    masks[True] = full & near
  return masks


@functools.partial(
    jax.jit, static_argnames=("model", "return_hidden", "remat", "output_from", "activations")
)
def score(
    model: Model,
    params: Params,
    tokens,
    mask=None,
    return_hidden: bool = False,
    remat: bool | str = False,
    output_from: int = 0,
    activations: Optional[jax.sharding.Sharding] = None,
):
  """Logits [B,T,V] float32 (after the final soft-cap) predicting token t+1 from tokens <= t, or
  with `return_hidden=True` the final-norm hidden states [B,T,D] in the model dtype.

  `mask` [B,T] (1 = real token, 0 = padding; default all ones) may pad on either side; outputs at
  padded positions are meaningless. Pure and jit-friendly (nested jit inlines). Attention is
  dense (a [B,H,T,T] float32 score matrix per layer). `remat=True` recomputes each layer in the
  backward pass (`nnx.remat` per block), so gradients keep one layer's activations, not all; a
  policy name of gkd_jax/remat.py (e.g. "save_dots") keeps part of them.
  `output_from`: outputs for positions >= output_from only (the last layer runs there only).
  `activations`: the sharding of the residual stream [B,T,D] on a mesh (see `Decoder.__call__`).
  """
  if mask is None:
    mask = jnp.ones(tokens.shape, jnp.int32)
  decoder = model.bind(params)
  hidden, _ = decoder(
      tokens,
      positions_from_mask(mask),
      attention_masks(model, mask),
      remat=remat,
      output_from=output_from,
      activations=activations,
  )
  if return_hidden:
    return hidden
  return decoder.logits(hidden)
