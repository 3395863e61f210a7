"""Pallas TPU (Mosaic) kernels for the fused linear divergence.

Three kernels, each recomputing logit tiles ``hidden[bn, D] @ unembed[D, bv]`` in VMEM:

  forward  grid (N/bn, 2, V/bv): phase 0 runs the online log-sum-exp of student and teacher, phase 1
           (normalisers now final) sums the divergence terms F, G = sum_v df/ds_v and the
           `common.stat_terms` (entropies, student log-prob of the token). The per-token outputs stay resident in VMEM across the two "arbitrary" axes.
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
  m_ref[...], l_ref[...] = common.stats_update(m_ref[...], l_ref[...], z, ok)


def _logp(z, m, l):
  """Log-probs of a tile from raw online statistics m, l ([bn, 1])."""
  return common.log_probs(z, *common.stats_finalize(m, l))


def _fwd_kernel(
    spec,
    V,
    bv,
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
  phase, j = pl.program_id(1), pl.program_id(2)
  _, zs, zt, cols, ok = _tiles(spec, hs_ref, ws_ref, ht_ref, wt_ref, j * bv, V)

  @pl.when((phase == 0) & (j == 0))
  def _init():
    for ref in (ms_ref, mt_ref):
      ref[...] = jnp.full(ref.shape, NEG_INF, jnp.float32)
    for ref in (ls_ref, lt_ref, f_ref, g_ref, *stat_refs):
      ref[...] = jnp.zeros(ref.shape, jnp.float32)

  @pl.when(phase == 0)
  def _stats():
    _online_update(ms_ref, ls_ref, zs, ok)
    _online_update(mt_ref, lt_ref, zt, ok)

  @pl.when(phase == 1)
  def _values():
    s = _logp(zs, ms_ref[...], ls_ref[...])
    t = _logp(zt, mt_ref[...], lt_ref[...])
    onehot = cols == tok_ref[...]
    terms = common.tile_terms(spec, s, t, ok, onehot) + common.stat_terms(s, t, ok, onehot)
    for ref, x in zip((f_ref, g_ref, *stat_refs), terms):
      ref[...] += jnp.sum(x, axis=1, keepdims=True)


def _dz(
    spec,
    V,
    bv,
    col0,
    hs_ref,
    ws_ref,
    ht_ref,
    wt_ref,
    tok_ref,
    ct_ref,
    ms_ref,
    ls_ref,
    mt_ref,
    lt_ref,
    g_ref,
):
  zs_raw, zs, zt, cols, ok = _tiles(spec, hs_ref, ws_ref, ht_ref, wt_ref, col0, V)
  s = _logp(zs, ms_ref[...], ls_ref[...])
  t = _logp(zt, mt_ref[...], lt_ref[...])
  _, g = common.tile_terms(spec, s, t, ok, cols == tok_ref[...])
  dz = common.student_logit_grad(spec, s, g, g_ref[...], ct_ref[...], zs_raw, ok)
  return dz.astype(hs_ref.dtype)


def _dh_kernel(
    spec,
    V,
    bv,
    hs_ref,
    ws_ref,
    ht_ref,
    wt_ref,
    tok_ref,
    ct_ref,
    ms_ref,
    ls_ref,
    mt_ref,
    lt_ref,
    g_ref,
    dh_ref,
    acc_ref,
):
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  dz = _dz(
      spec,
      V,
      bv,
      j * bv,
      hs_ref,
      ws_ref,
      ht_ref,
      wt_ref,
      tok_ref,
      ct_ref,
      ms_ref,
      ls_ref,
      mt_ref,
      lt_ref,
      g_ref,
  )
  acc_ref[...] += common.dot(dz.astype(ws_ref.dtype), ws_ref[...], trans_b=True)

  @pl.when(j == pl.num_programs(1) - 1)
  def _write():
    dh_ref[...] = acc_ref[...].astype(dh_ref.dtype)


def _dw_kernel(
    spec,
    V,
    bv,
    hs_ref,
    ws_ref,
    ht_ref,
    wt_ref,
    tok_ref,
    ct_ref,
    ms_ref,
    ls_ref,
    mt_ref,
    lt_ref,
    g_ref,
    dw_ref,
    acc_ref,
):
  j, i = pl.program_id(0), pl.program_id(1)

  @pl.when(i == 0)
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  dz = _dz(
      spec,
      V,
      bv,
      j * bv,
      hs_ref,
      ws_ref,
      ht_ref,
      wt_ref,
      tok_ref,
      ct_ref,
      ms_ref,
      ls_ref,
      mt_ref,
      lt_ref,
      g_ref,
  )
  acc_ref[...] += common.dot(hs_ref[...], dz, trans_a=True)

  @pl.when(i == pl.num_programs(1) - 1)
  def _write():
    dw_ref[...] = acc_ref[...].astype(dw_ref.dtype)


# Mosaic's scoped-VMEM limit is capped here so that one setting compiles on v5e and v6e (128 MiB of
# VMEM per TensorCore) and v5p (64 MiB); default blocks are chosen to need at most VMEM_BUDGET.
VMEM_LIMIT_CAP = 60 * 2**20
VMEM_BUDGET = 48 * 2**20
DEFAULT_VMEM_LIMIT = 16 * 2**20  # Mosaic's own default


def vmem_bytes(bn, bv, ds, dt, student_itemsize, teacher_itemsize=None):
  """Upper estimate of the scoped VMEM one grid step of the worst of the three kernels needs.

  Double-buffered input and output blocks, the float32 accumulator, ~2 MiB of tile temporaries,
  and, for float32 operands (multiplied at HIGHEST precision, i.e. split into bf16 passes), the
  temporaries and register spills of that emulation: ~9 bytes per (bn + bv) x D. Calibrated on
  XLA:TPU's reported scoped allocations (libtpu 0.0.42.1, v5p, Gemma 2 widths): the d-hidden kernel
  at bn=256 needs 17.75 MiB (bf16, bv=256), 55.1 MiB (f32, bv=256), 76.6 MiB (f32, bv=512).
  """
  ts = student_itemsize
  tt = student_itemsize if teacher_itemsize is None else teacher_itemsize
  blocks = 2 * (ts * (bn * ds + ds * bv) + tt * (bn * dt + dt * bv))
  out_and_acc = (2 * ts + 4) * max(bn, bv) * ds
  emulation = sum(9 * (bn + bv) * d for d, t in ((ds, ts), (dt, tt)) if t >= 4)
  return blocks + out_and_acc + 2 * 2**20 + 4 * bn * bv + emulation


def vmem_limit(need):
  """The vmem_limit_bytes the kernels request for an estimated need (ValueError above the cap)."""
  limit = max(DEFAULT_VMEM_LIMIT, -(-int(1.25 * need) // 2**20) * 2**20)
  if limit > VMEM_LIMIT_CAP:
    raise ValueError(
        f"the Pallas TPU divergence blocks need ~{need / 2**20:.0f} MiB of VMEM, more "
        f"than the {VMEM_LIMIT_CAP // 2**20} MiB every TPU generation has: pass a "
        "smaller token_block / vocab_block"
    )
  return limit


def choose_blocks(n, v, ds, dt, student_itemsize, teacher_itemsize, round_up):
  """(bn, bv): the largest of 256 x {512, 256, 128} (then 128 x 128) within VMEM_BUDGET, cut to N
  and V for small inputs. float32 operands need the smaller blocks."""
  bn_max, bv_max = min(256, round_up(n, 8)), min(512, round_up(v, 128))
  candidates = [(bn_max, min(bv, bv_max)) for bv in (512, 256, 128)] + [(min(128, bn_max), 128)]
  for bn, bv in candidates:
    if vmem_bytes(bn, bv, ds, dt, student_itemsize, teacher_itemsize) <= VMEM_BUDGET:
      return bn, bv
  return candidates[-1]


def _params(semantics, need):
  return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=vmem_limit(need))


def _need(bn, bv, hs, ht):
  return vmem_bytes(bn, bv, hs.shape[1], ht.shape[1], hs.dtype.itemsize, ht.dtype.itemsize)


def forward(spec, V, hs, Ws, ht, Wt, tok_N1, *, bn, bv, interpret=False):
  """Padded inputs -> (ms, ls, mt, lt, F, G, H_S, H_T, log p_S(tok)), each [Npad, 1] float32."""
  n, ds = hs.shape
  dt, vp = ht.shape[1], Ws.shape[1]
  grid = (n // bn, 2, vp // bv)
  row = lambda i, p, j: (i, 0)  # noqa: E731
  vec = pl.BlockSpec((bn, 1), row)
  out = jax.ShapeDtypeStruct((n, 1), jnp.float32)
  return pl.pallas_call(
      functools.partial(_fwd_kernel, spec, V, bv),
      grid=grid,
      in_specs=[
          pl.BlockSpec((bn, ds), row),
          pl.BlockSpec((ds, bv), lambda i, p, j: (0, j)),
          pl.BlockSpec((bn, dt), row),
          pl.BlockSpec((dt, bv), lambda i, p, j: (0, j)),
          vec,
      ],
      out_specs=[vec] * 9,
      out_shape=[out] * 9,
      compiler_params=_params(("parallel", "arbitrary", "arbitrary"), _need(bn, bv, hs, ht)),
      interpret=interpret,
      name="gkd_divergence_fwd",
  )(hs, Ws, ht, Wt, tok_N1)


def backward(spec, V, hs, Ws, ht, Wt, tok_N1, ct_N1, stats, *, bn, bv, interpret=False):
  """Padded inputs, stats = (ms, ls, mt, lt, G) [Npad, 1] -> (d hs, d Ws)."""
  n, ds = hs.shape
  dt, vp = ht.shape[1], Ws.shape[1]
  args = (hs, Ws, ht, Wt, tok_N1, ct_N1) + tuple(stats)
  need = _need(bn, bv, hs, ht)

  def specs(row, col):
    vec = pl.BlockSpec((bn, 1), row)
    return [
        pl.BlockSpec((bn, ds), row),
        pl.BlockSpec((ds, bv), col),
        pl.BlockSpec((bn, dt), row),
        pl.BlockSpec((dt, bv), col),
    ] + [vec] * 7

  def call(kernel, grid, row, col, out_block, out_index, out, name):
    return pl.pallas_call(
        functools.partial(kernel, spec, V, bv),
        grid=grid,
        in_specs=specs(row, col),
        out_specs=pl.BlockSpec(out_block, out_index),
        out_shape=jax.ShapeDtypeStruct(out.shape, out.dtype),
        scratch_shapes=[pltpu.VMEM(out_block, jnp.float32)],
        compiler_params=_params(("parallel", "arbitrary"), need),
        interpret=interpret,
        name=name,
    )(*args)

  # d hidden: grid (token blocks, vocab blocks); d unembed: grid (vocab blocks, token blocks).
  dh = call(
      _dh_kernel,
      (n // bn, vp // bv),
      lambda i, j: (i, 0),
      lambda i, j: (0, j),
      (bn, ds),
      lambda i, j: (i, 0),
      hs,
      "gkd_divergence_dhidden",
  )
  dw = call(
      _dw_kernel,
      (vp // bv, n // bn),
      lambda j, i: (i, 0),
      lambda j, i: (0, j),
      (ds, bv),
      lambda j, i: (0, j),
      Ws,
      "gkd_divergence_dunembed",
  )
  return dh, dw
