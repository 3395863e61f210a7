"""Pallas GPU (Triton) forward kernel for the fused linear divergence.

Grid over token blocks; each program walks the vocabulary twice (online log-sum-exp, then the
divergence terms and G), computing every logit tile [bn, bv] as a loop of [bn, bd] @ [bd, bv] products
over the hidden size, so no [N, V] array and no full hidden row lives in registers. The backward pass
on GPU is the chunked XLA pass (`pallas.py`). Triton needs power-of-two tiles: N, V and both hidden
sizes are zero-padded to the blocks when they do not divide (only ragged test shapes; Gemma-2's
2304 / 3584 / 262144 divide 64 and 128).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from gkd_jax.kernels import common

NEG_INF = common.NEG_INF
TOKEN_BLOCK, VOCAB_BLOCK, HIDDEN_BLOCK = 64, 64, 64


def _round_up(x, m):
  return -(-x // m) * m


def _pad(x, axis, size):
  if x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths)


def _kernel(spec, V, bv, bd, hs_ref, ws_ref, ht_ref, wt_ref, tok_ref,
            ms_ref, ls_ref, mt_ref, lt_ref, f_ref, g_ref):
  bn = hs_ref.shape[0]
  nv = ws_ref.shape[1] // bv
  tok = tok_ref[...]

  def logits(h_ref, w_ref, v0):
    def body(k, acc):
      h = h_ref[:, pl.ds(k * bd, bd)]
      w = w_ref[pl.ds(k * bd, bd), pl.ds(v0, bv)]
      return acc + common.dot(h, w)
    return jax.lax.fori_loop(0, h_ref.shape[1] // bd, body, jnp.zeros((bn, bv), jnp.float32))

  def tile(j):
    v0 = j * bv
    zs = common.scale(logits(hs_ref, ws_ref, v0), spec.student_softcap, spec.temperature)
    zt = common.scale(logits(ht_ref, wt_ref, v0), spec.teacher_softcap, spec.temperature)
    cols = v0 + jax.lax.broadcasted_iota(jnp.int32, (bn, bv), 1)
    return zs, zt, cols, cols < V

  def update(m, l, z, ok):
    z = jnp.where(ok, z, NEG_INF)
    m_new = jnp.maximum(m, jnp.max(z, axis=1))
    m_safe = jnp.where(m_new == NEG_INF, 0.0, m_new)
    return m_new, l * jnp.exp(m - m_safe) + jnp.sum(jnp.exp(z - m_safe[:, None]), axis=1)

  def stats_body(j, carry):
    ms, ls, mt, lt = carry
    zs, zt, _, ok = tile(j)
    return update(ms, ls, zs, ok) + update(mt, lt, zt, ok)

  neg = jnp.full((bn,), NEG_INF, jnp.float32)
  zero = jnp.zeros((bn,), jnp.float32)
  ms, ls, mt, lt = jax.lax.fori_loop(0, nv, stats_body, (neg, zero, neg, zero))
  sh_s, ll_s = jnp.where(ms == NEG_INF, 0.0, ms), jnp.log(ls)
  sh_t, ll_t = jnp.where(mt == NEG_INF, 0.0, mt), jnp.log(lt)

  def value_body(j, carry):
    F, G = carry
    zs, zt, cols, ok = tile(j)
    s = (zs - sh_s[:, None]) - ll_s[:, None]
    t = (zt - sh_t[:, None]) - ll_t[:, None]
    f, g = common.tile_terms(spec, s, t, ok, cols == tok[:, None])
    return F + jnp.sum(f, axis=1), G + jnp.sum(g, axis=1)

  F, G = jax.lax.fori_loop(0, nv, value_body, (zero, zero))
  for ref, x in ((ms_ref, ms), (ls_ref, ls), (mt_ref, mt), (lt_ref, lt), (f_ref, F), (g_ref, G)):
    ref[...] = x


def forward(spec, V, hs, Ws, ht, Wt, tok, *, token_block=None, vocab_block=None, hidden_block=None,
            interpret=False):
  """Unpadded inputs -> (ms, ls, mt, lt, F, G), each [N, 1] float32."""
  N = hs.shape[0]
  bn = token_block or TOKEN_BLOCK
  bv = vocab_block or VOCAB_BLOCK
  bd = hidden_block or HIDDEN_BLOCK
  n, v = _round_up(N, bn), _round_up(V, bv)
  ds, dt = _round_up(hs.shape[1], bd), _round_up(ht.shape[1], bd)
  hs = _pad(_pad(hs, 0, n), 1, ds)
  ht = _pad(_pad(ht, 0, n), 1, dt)
  Ws = _pad(_pad(Ws, 1, v), 0, ds)
  Wt = _pad(_pad(Wt, 1, v), 0, dt)
  tok = _pad(tok, 0, n)
  vec = pl.BlockSpec((bn,), lambda i: (i,))
  outs = pl.pallas_call(
      functools.partial(_kernel, spec, V, bv, bd),
      grid=(n // bn,),
      in_specs=[pl.BlockSpec((bn, ds), lambda i: (i, 0)), pl.BlockSpec((ds, v), lambda i: (0, 0)),
                pl.BlockSpec((bn, dt), lambda i: (i, 0)), pl.BlockSpec((dt, v), lambda i: (0, 0)),
                vec],
      out_specs=[vec] * 6,
      out_shape=[jax.ShapeDtypeStruct((n,), jnp.float32)] * 6,
      compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
      interpret=interpret,
      name="gkd_divergence_fwd_gpu",
  )(hs, Ws, ht, Wt, tok)
  return tuple(x[:N, None] for x in outs)
