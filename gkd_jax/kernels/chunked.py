"""Pure-XLA streaming over vocabulary blocks (the CPU default and the fallback everywhere).

Forward: pass 1 computes the per-token normalisers of student and teacher with an online log-sum-exp;
pass 2 sums the divergence terms, ``G = sum_v df/ds_v`` and the `common.stat_terms`. Backward: one pass that
recomputes each logit tile, forms ``dz = ct * (g - p_S G) * dscale`` and contracts it immediately:
``d student_hidden += dz @ W_blk^T`` and ``d W_blk = student_hidden^T @ dz`` written in place. Nothing of
size [N, V] is ever live; the largest temporaries are [N, vocab_block] tiles and the [N, Ds] float32
hidden-state gradient accumulator.

Ragged vocabularies need no padding: the last block is shifted left to end at V and the columns it shares
with the previous block are masked out of every reduction (gradients of those columns are recomputed
identically, so overwriting them is harmless).
"""

from __future__ import annotations

import functools
from typing import Callable, Union

import jax
import jax.numpy as jnp

from gkd_jax.divergences import DivergenceSpec
from gkd_jax.kernels import common

DEFAULT_VOCAB_BLOCK = 512

# get_tiles(start) -> (student, teacher) raw logit tiles [N, bv] of the columns [start, start + bv).
TileFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]
# Four [N] float32 vectors: (F, H_S, H_T, log p_S(token)), statistics (ms, ls, mt, lt) or
# normalisers (shift_s, log l_s, shift_t, log l_t).
Vectors4 = tuple[jax.Array, jax.Array, jax.Array, jax.Array]


def block(j: Union[int, jax.Array], bv: int, V: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(start, columns, ok) of vocabulary block j: the last block ends at V, overlap masked out."""
  start = jnp.minimum(j * bv, V - bv)
  cols = start + jnp.arange(bv)
  return start, cols, cols >= j * bv


def stats_pass(spec: DivergenceSpec, get_tiles: TileFn, N: int, V: int, bv: int) -> Vectors4:
  """Pass 1: raw online statistics (ms, ls, mt, lt) [N] of student and teacher."""

  def body(j, carry):
    ms, ls, mt, lt = carry
    start, _, ok = block(j, bv, V)
    zs_raw, zt_raw = get_tiles(start)
    zs = common.scale(zs_raw, spec.student_softcap, spec.temperature)
    zt = common.scale(zt_raw, spec.teacher_softcap, spec.temperature)
    ms, ls = common.stats_update(ms, ls, zs, ok[None, :])
    mt, lt = common.stats_update(mt, lt, zt, ok[None, :])
    return ms, ls, mt, lt

  init = common.stats_init((N,)) + common.stats_init((N,))
  return jax.lax.fori_loop(0, -(-V // bv), body, init)


def value_pass(
    spec: DivergenceSpec,
    get_tiles: TileFn,
    N: int,
    V: int,
    bv: int,
    tokens: jax.Array,
    norms: Vectors4,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """Pass 2: (F, G, H_S, H_T, log p_S(token)) [N] given the final normalisers."""

  def body(j, carry):
    start, cols, ok = block(j, bv, V)
    s, t, _ = _logprobs(spec, get_tiles(start), norms)
    onehot = cols[None, :] == tokens[:, None]
    terms = common.tile_terms(spec, s, t, ok[None, :], onehot)
    terms += common.stat_terms(s, t, ok[None, :], onehot)
    return tuple(acc + x.sum(-1) for acc, x in zip(carry, terms))

  zeros = jnp.zeros((N,), jnp.float32)
  return jax.lax.fori_loop(0, -(-V // bv), body, (zeros,) * 5)


def forward(
    spec: DivergenceSpec, get_tiles: TileFn, N: int, V: int, bv: int, tokens: jax.Array
) -> tuple[Vectors4, tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]]:
  """((F, H_S, H_T, log p_S(token)), (shift_s, log l_s, shift_t, log l_t, G)): values and
  backward residuals."""
  ms, ls, mt, lt = stats_pass(spec, get_tiles, N, V, bv)
  norms = common.stats_finalize(ms, ls) + common.stats_finalize(mt, lt)
  F, G, *stats = value_pass(spec, get_tiles, N, V, bv, tokens, norms)
  return (F, *stats), norms + (G,)


def _logprobs(spec, tiles, norms):
  zs_raw, zt_raw = tiles
  sh_s, ll_s, sh_t, ll_t = norms
  zs = common.scale(zs_raw, spec.student_softcap, spec.temperature)
  zt = common.scale(zt_raw, spec.teacher_softcap, spec.temperature)
  s = common.log_probs(zs, sh_s[:, None], ll_s[:, None])
  t = common.log_probs(zt, sh_t[:, None], ll_t[:, None])
  return s, t, zs_raw


def _tile_grad(spec, tiles, norms, G, ct, cols, tokens):
  """dz [N, bv] for every column of the tile (no overlap masking)."""
  s, t, zs_raw = _logprobs(spec, tiles, norms)
  onehot = cols[None, :] == tokens[:, None]
  ok = jnp.ones(s.shape, bool)
  _, g = common.tile_terms(spec, s, t, ok, onehot)
  return common.student_logit_grad(spec, s, g, G[:, None], ct[:, None], zs_raw, ok)


# ----------------------------------------------------------------------------------------------------
# Fused with the unembedding: hidden [N, D] @ unembed [D, V].


def fused_tiles(hs: jax.Array, Ws: jax.Array, ht: jax.Array, Wt: jax.Array, bv: int) -> TileFn:
  def get(start):
    ws = jax.lax.dynamic_slice_in_dim(Ws, start, bv, axis=1)
    wt = jax.lax.dynamic_slice_in_dim(Wt, start, bv, axis=1)
    return common.dot(hs, ws), common.dot(ht, wt)

  return get


def fused(
    spec: DivergenceSpec,
    bv: int,
    hs: jax.Array,
    Ws: jax.Array,
    ht: jax.Array,
    Wt: jax.Array,
    tokens: jax.Array,
) -> Vectors4:
  """(divergence, student entropy, teacher entropy, student log p(token)) [N] of hs @ Ws vs
  ht @ Wt; custom VJP to hs and Ws through the divergence only (the rest are metrics)."""
  struct, values = common.split(spec)
  return fused_split(struct, bv, values, hs, Ws, ht, Wt, tokens)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def fused_split(
    struct: common.Structure,
    bv: int,
    values: jax.Array,
    hs: jax.Array,
    Ws: jax.Array,
    ht: jax.Array,
    Wt: jax.Array,
    tokens: jax.Array,
) -> Vectors4:
  """`fused` with the hyperparameters as a runtime array (`common.split`)."""
  return _fused_fwd(struct, bv, values, hs, Ws, ht, Wt, tokens)[0]


def _fused_fwd(struct, bv, values, hs, Ws, ht, Wt, tokens):
  spec = struct.bind(values)
  N, V = hs.shape[0], Ws.shape[1]
  outs, res = forward(spec, fused_tiles(hs, Ws, ht, Wt, bv), N, V, bv, tokens)
  return outs, (values, hs, Ws, ht, Wt, tokens, res)


def _fused_bwd(struct, bv, residuals, cts):
  ct = cts[0]  # the metrics get no gradient
  values, hs, Ws, ht, Wt, tokens, (sh_s, ll_s, sh_t, ll_t, G) = residuals
  spec = struct.bind(values)
  dhs, dWs = fused_backward(spec, bv, hs, Ws, ht, Wt, tokens, (sh_s, ll_s, sh_t, ll_t), G, ct)
  return None, dhs.astype(hs.dtype), dWs, None, None, None


def fused_backward(
    spec: DivergenceSpec,
    bv: int,
    hs: jax.Array,
    Ws: jax.Array,
    ht: jax.Array,
    Wt: jax.Array,
    tokens: jax.Array,
    norms: Vectors4,
    G: jax.Array,
    ct: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """(d hs float32, d Ws) by one streaming pass over the vocabulary blocks."""
  V = Ws.shape[1]
  get = fused_tiles(hs, Ws, ht, Wt, bv)
  ct = ct.astype(jnp.float32)

  def body(j, carry):
    dhs, dWs = carry
    start, cols, ok = block(j, bv, V)
    dz = _tile_grad(spec, get(start), norms, G, ct, cols, tokens).astype(hs.dtype)
    dW_blk = common.dot(hs, dz, trans_a=True).astype(Ws.dtype)
    dWs = jax.lax.dynamic_update_slice_in_dim(dWs, dW_blk, start, axis=1)
    ws = jax.lax.dynamic_slice_in_dim(Ws, start, bv, axis=1)
    dhs = dhs + common.dot(jnp.where(ok[None, :], dz, 0).astype(hs.dtype), ws, trans_b=True)
    return dhs, dWs

  init = (jnp.zeros(hs.shape, jnp.float32), jnp.zeros(Ws.shape, Ws.dtype))
  return jax.lax.fori_loop(0, -(-V // bv), body, init)


fused_split.defvjp(_fused_fwd, _fused_bwd)


# ----------------------------------------------------------------------------------------------------
# Logits given: student_logits [N, V], teacher_logits [N, V].


def _logit_tiles(zs, zt, bv):
  def get(start):
    return (
        jax.lax.dynamic_slice_in_dim(zs, start, bv, axis=1),
        jax.lax.dynamic_slice_in_dim(zt, start, bv, axis=1),
    )

  return get


def from_logits(
    spec: DivergenceSpec, bv: int, zs: jax.Array, zt: jax.Array, tokens: jax.Array
) -> jax.Array:
  """Per-token divergence [N] of logits [N, V]; custom VJP to zs only."""
  struct, values = common.split(spec)
  return from_logits_split(struct, bv, values, zs, zt, tokens)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def from_logits_split(
    struct: common.Structure,
    bv: int,
    values: jax.Array,
    zs: jax.Array,
    zt: jax.Array,
    tokens: jax.Array,
) -> jax.Array:
  return _logits_fwd(struct, bv, values, zs, zt, tokens)[0]


def _logits_fwd(struct, bv, values, zs, zt, tokens):
  spec = struct.bind(values)
  N, V = zs.shape
  (F, *_), res = forward(spec, _logit_tiles(zs, zt, bv), N, V, bv, tokens)
  return F, (values, zs, zt, tokens, res)


def _logits_bwd(struct, bv, residuals, ct):
  values, zs, zt, tokens, (sh_s, ll_s, sh_t, ll_t, G) = residuals
  spec = struct.bind(values)
  norms = (sh_s, ll_s, sh_t, ll_t)
  V = zs.shape[1]
  get = _logit_tiles(zs, zt, bv)
  ct = ct.astype(jnp.float32)

  def body(j, dzs):
    start, cols, _ = block(j, bv, V)
    dz = _tile_grad(spec, get(start), norms, G, ct, cols, tokens)
    return jax.lax.dynamic_update_slice_in_dim(dzs, dz.astype(zs.dtype), start, axis=1)

  dzs = jax.lax.fori_loop(0, -(-V // bv), body, jnp.zeros(zs.shape, zs.dtype))
  return None, dzs, None, None


from_logits_split.defvjp(_logits_fwd, _logits_bwd)
