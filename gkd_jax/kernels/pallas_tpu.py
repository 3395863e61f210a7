"""Pallas TPU (Mosaic) kernels for the fused linear divergence.

Three kernels, each recomputing logit tiles ``hidden[bn, D] @ unembed[D, bv]`` in VMEM:

  forward  grid (N/bn, 2, V/bv): phase 0 runs the online log-sum-exp of student and teacher, phase 1
           (normalisers now final) sums the divergence terms F and G = sum_v df/ds_v. The per-token
           outputs stay resident in VMEM across the two "arbitrary" axes.
  d hidden grid (N/bn, V/bv): dz = ct (g - p_S G) dscale per tile, accumulated as dz @ W_blk^T in a
           float32 VMEM scratch [bn, Ds].
  d unembed grid (V/bv, N/bn): the same dz, accumulated as hidden_blk^T @ dz in a float32 scratch
           [Ds, bv].

Per-token vectors travel as [N, 1] float32 arrays. Inputs whose N or V is not a multiple of the
blocks are zero-padded by the caller (`pallas.py`); padded vocabulary columns are masked in the kernel
with the static true vocabulary size, padded tokens carry a zero cotangent.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from gkd_jax.kernels import common

NEG_INF = common.NEG_INF


def _tiles(spec, hs_ref, ws_ref, ht_ref, wt_ref, col0, V):
  zs_raw = common.dot(hs_ref[...], ws_ref[...])
  zt_raw = common.dot(ht_ref[...], wt_ref[...])
  zs = common.scale(zs_raw, spec.student_softcap, spec.temperature)
  zt = common.scale(zt_raw, spec.teacher_softcap, spec.temperature)
  cols = col0 + jax.lax.broadcasted_iota(jnp.int32, zs.shape, 1)
  return zs_raw, zs, zt, cols, cols < V


def _online_update(m_ref, l_ref, z, ok):
  z = jnp.where(ok, z, NEG_INF)
  m_old = m_ref[...]
  m_new = jnp.maximum(m_old, jnp.max(z, axis=1, keepdims=True))
  m_safe = jnp.where(m_new == NEG_INF, 0.0, m_new)
  l_ref[...] = l_ref[...] * jnp.exp(m_old - m_safe) + jnp.sum(jnp.exp(z - m_safe), axis=1,
                                                              keepdims=True)
  m_ref[...] = m_new


def _logp(z, m, l):
  """(z - shift) - log l from raw online statistics m, l ([bn, 1])."""
  return (z - jnp.where(m == NEG_INF, 0.0, m)) - jnp.log(l)


def _fwd_kernel(spec, V, bv, hs_ref, ws_ref, ht_ref, wt_ref, tok_ref,
                ms_ref, ls_ref, mt_ref, lt_ref, f_ref, g_ref):
  phase, j = pl.program_id(1), pl.program_id(2)
  _, zs, zt, cols, ok = _tiles(spec, hs_ref, ws_ref, ht_ref, wt_ref, j * bv, V)

  @pl.when((phase == 0) & (j == 0))
  def _init():
    for ref in (ms_ref, mt_ref):
      ref[...] = jnp.full(ref.shape, NEG_INF, jnp.float32)
    for ref in (ls_ref, lt_ref, f_ref, g_ref):
      ref[...] = jnp.zeros(ref.shape, jnp.float32)

  @pl.when(phase == 0)
  def _stats():
    _online_update(ms_ref, ls_ref, zs, ok)
    _online_update(mt_ref, lt_ref, zt, ok)

  @pl.when(phase == 1)
  def _values():
    s = _logp(zs, ms_ref[...], ls_ref[...])
    t = _logp(zt, mt_ref[...], lt_ref[...])
    f, g = common.tile_terms(spec, s, t, ok, cols == tok_ref[...])
    f_ref[...] += jnp.sum(f, axis=1, keepdims=True)
    g_ref[...] += jnp.sum(g, axis=1, keepdims=True)


def _dz(spec, V, bv, col0, hs_ref, ws_ref, ht_ref, wt_ref, tok_ref, ct_ref, ms_ref, ls_ref,
        mt_ref, lt_ref, g_ref):
  zs_raw, zs, zt, cols, ok = _tiles(spec, hs_ref, ws_ref, ht_ref, wt_ref, col0, V)
  s = _logp(zs, ms_ref[...], ls_ref[...])
  t = _logp(zt, mt_ref[...], lt_ref[...])
  _, g = common.tile_terms(spec, s, t, ok, cols == tok_ref[...])
  dz = common.student_logit_grad(spec, s, g, g_ref[...], ct_ref[...], zs_raw, ok)
  return dz.astype(hs_ref.dtype)


def _dh_kernel(spec, V, bv, hs_ref, ws_ref, ht_ref, wt_ref, tok_ref, ct_ref, ms_ref, ls_ref,
               mt_ref, lt_ref, g_ref, dh_ref, acc_ref):
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  dz = _dz(spec, V, bv, j * bv, hs_ref, ws_ref, ht_ref, wt_ref, tok_ref, ct_ref, ms_ref, ls_ref,
           mt_ref, lt_ref, g_ref)
  acc_ref[...] += common.dot(dz.astype(ws_ref.dtype), ws_ref[...], trans_b=True)

  @pl.when(j == pl.num_programs(1) - 1)
  def _write():
    dh_ref[...] = acc_ref[...].astype(dh_ref.dtype)


def _dw_kernel(spec, V, bv, hs_ref, ws_ref, ht_ref, wt_ref, tok_ref, ct_ref, ms_ref, ls_ref,
               mt_ref, lt_ref, g_ref, dw_ref, acc_ref):
  j, i = pl.program_id(0), pl.program_id(1)

  @pl.when(i == 0)
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  dz = _dz(spec, V, bv, j * bv, hs_ref, ws_ref, ht_ref, wt_ref, tok_ref, ct_ref, ms_ref, ls_ref,
           mt_ref, lt_ref, g_ref)
  acc_ref[...] += common.dot(hs_ref[...], dz, trans_a=True)

  @pl.when(i == pl.num_programs(1) - 1)
  def _write():
    dw_ref[...] = acc_ref[...].astype(dw_ref.dtype)


def vmem_bytes(bn, bv, ds, dt, itemsize):
  """Rough VMEM need per grid step: double-buffered input blocks, ~10 float32 tiles, accumulator."""
  blocks = 2 * itemsize * (bn * ds + ds * bv + bn * dt + dt * bv)
  return blocks + 10 * 4 * bn * bv + 4 * max(bn, bv) * max(ds, dt)


def _params(semantics, need):
  # Ask Mosaic for what the blocks need (plus slack), at least the usual 16 MiB default; pick smaller
  # blocks on chips with little VMEM.
  limit = max(16 * 2**20, -(-int(1.5 * need) // 2**20) * 2**20)
  return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=limit)


def forward(spec, V, hs, Ws, ht, Wt, tok_N1, *, bn, bv, interpret=False):
  """Padded inputs -> (ms, ls, mt, lt, F, G), each [Npad, 1] float32."""
  n, ds = hs.shape
  dt, vp = ht.shape[1], Ws.shape[1]
  grid = (n // bn, 2, vp // bv)
  row = lambda i, p, j: (i, 0)  # noqa: E731
  vec = pl.BlockSpec((bn, 1), row)
  out = jax.ShapeDtypeStruct((n, 1), jnp.float32)
  return pl.pallas_call(
      functools.partial(_fwd_kernel, spec, V, bv),
      grid=grid,
      in_specs=[pl.BlockSpec((bn, ds), row), pl.BlockSpec((ds, bv), lambda i, p, j: (0, j)),
                pl.BlockSpec((bn, dt), row), pl.BlockSpec((dt, bv), lambda i, p, j: (0, j)), vec],
      out_specs=[vec] * 6,
      out_shape=[out] * 6,
      compiler_params=_params(("parallel", "arbitrary", "arbitrary"),
                              vmem_bytes(bn, bv, ds, dt, hs.dtype.itemsize)),
      interpret=interpret,
      name="gkd_divergence_fwd",
  )(hs, Ws, ht, Wt, tok_N1)


def backward(spec, V, hs, Ws, ht, Wt, tok_N1, ct_N1, stats, *, bn, bv, interpret=False):
  """Padded inputs, stats = (ms, ls, mt, lt, G) [Npad, 1] -> (d hs, d Ws)."""
  n, ds = hs.shape
  dt, vp = ht.shape[1], Ws.shape[1]
  args = (hs, Ws, ht, Wt, tok_N1, ct_N1) + tuple(stats)
  need = vmem_bytes(bn, bv, ds, dt, hs.dtype.itemsize)

  def specs(row, col):
    vec = pl.BlockSpec((bn, 1), row)
    return [pl.BlockSpec((bn, ds), row), pl.BlockSpec((ds, bv), col), pl.BlockSpec((bn, dt), row),
            pl.BlockSpec((dt, bv), col)] + [vec] * 7

  dh = pl.pallas_call(
      functools.partial(_dh_kernel, spec, V, bv),
      grid=(n // bn, vp // bv),
      in_specs=specs(lambda i, j: (i, 0), lambda i, j: (0, j)),
      out_specs=pl.BlockSpec((bn, ds), lambda i, j: (i, 0)),
      out_shape=jax.ShapeDtypeStruct(hs.shape, hs.dtype),
      scratch_shapes=[pltpu.VMEM((bn, ds), jnp.float32)],
      compiler_params=_params(("parallel", "arbitrary"), need),
      interpret=interpret,
      name="gkd_divergence_dhidden",
  )(*args)
  dw = pl.pallas_call(
      functools.partial(_dw_kernel, spec, V, bv),
      grid=(vp // bv, n // bn),
      in_specs=specs(lambda j, i: (i, 0), lambda j, i: (0, j)),
      out_specs=pl.BlockSpec((ds, bv), lambda j, i: (0, j)),
      out_shape=jax.ShapeDtypeStruct(Ws.shape, Ws.dtype),
      scratch_shapes=[pltpu.VMEM((ds, bv), jnp.float32)],
      compiler_params=_params(("parallel", "arbitrary"), need),
      interpret=interpret,
      name="gkd_divergence_dunembed",
  )(*args)
  return dh, dw
