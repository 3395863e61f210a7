"""Pallas GPU (Triton) forward kernel for the fused linear divergence.

Grid over token blocks; each program walks the vocabulary twice (online log-sum-exp, then the
divergence terms, G and the `common.stat_terms`), computing every logit tile [bn, bv] as a loop of [bn, bd] @ [bd, bv] products
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

from gkd_jax.divergences import DivergenceSpec
from gkd_jax.kernels import common

TOKEN_BLOCK, VOCAB_BLOCK, HIDDEN_BLOCK = 64, 64, 64


_round_up, _pad = common.round_up, common.pad_to


def _kernel(
    spec,
    V,
    bv,
    bd,
    hs_ref,
    ws_ref,
    ht_ref,
    wt_ref,
    tok_ref,
    ms_ref,
    ls_ref,
    mt_ref,
    lt_ref,
    f_ref,
    g_ref,
    *stat_refs,
):
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

  def stats_body(j, carry):
    ms, ls, mt, lt = carry
    zs, zt, _, ok = tile(j)
    return common.stats_update(ms, ls, zs, ok) + common.stats_update(mt, lt, zt, ok)

  ms, ls, mt, lt = jax.lax.fori_loop(
      0, nv, stats_body, common.stats_init((bn,)) + common.stats_init((bn,))
  )
  sh_s, ll_s = common.stats_finalize(ms, ls)
  sh_t, ll_t = common.stats_finalize(mt, lt)

  def value_body(j, carry):
    zs, zt, cols, ok = tile(j)
    s = common.log_probs(zs, sh_s[:, None], ll_s[:, None])
    t = common.log_probs(zt, sh_t[:, None], ll_t[:, None])
    onehot = cols == tok[:, None]
    terms = common.tile_terms(spec, s, t, ok, onehot) + common.stat_terms(s, t, ok, onehot)
    return tuple(acc + jnp.sum(x, axis=1) for acc, x in zip(carry, terms))

  sums = jax.lax.fori_loop(0, nv, value_body, (jnp.zeros((bn,), jnp.float32),) * 5)
  outs = (ms_ref, ls_ref, mt_ref, lt_ref, f_ref, g_ref, *stat_refs)
  for ref, x in zip(outs, (ms, ls, mt, lt) + sums):
    ref[...] = x


def forward(
    spec: DivergenceSpec,
    V: int,
    hs: jax.Array,
    Ws: jax.Array,
    ht: jax.Array,
    Wt: jax.Array,
    tok: jax.Array,
    *,
    bn: int,
    bv: int,
    bd: int,
    interpret: bool = False,
) -> tuple[jax.Array, ...]:
  """Unpadded inputs, blocks bn x bv (tokens x vocabulary) stepping bd over the hidden size -> (ms,
  ls, mt, lt, F, G, H_S, H_T, log p_S(tok)), each [N, 1] float32."""
  N = hs.shape[0]
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
      in_specs=[
          pl.BlockSpec((bn, ds), lambda i: (i, 0)),
          pl.BlockSpec((ds, v), lambda i: (0, 0)),
          pl.BlockSpec((bn, dt), lambda i: (i, 0)),
          pl.BlockSpec((dt, v), lambda i: (0, 0)),
          vec,
      ],
      out_specs=[vec] * 9,
      out_shape=[jax.ShapeDtypeStruct((n,), jnp.float32)] * 9,
      compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
      interpret=interpret,
      name="gkd_divergence_fwd_gpu",
  )(hs, Ws, ht, Wt, tok)
  return tuple(x[:N, None] for x in outs)
