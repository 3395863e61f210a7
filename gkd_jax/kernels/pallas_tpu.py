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
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from gkd_jax.divergences import DivergenceSpec
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


def _fwd_kernel(spec, V, bv, *refs):
  """refs: inputs hs, ws, ht, wt, tok; outputs ms, ls, mt, lt, F, G and the `common.stat_terms`."""
  hs_ref, ws_ref, ht_ref, wt_ref, tok_ref, *out_refs = refs
  ms_ref, ls_ref, mt_ref, lt_ref, *sum_refs = out_refs
  phase, j = pl.program_id(1), pl.program_id(2)
  _, zs, zt, cols, ok = _tiles(spec, hs_ref, ws_ref, ht_ref, wt_ref, j * bv, V)

  @pl.when((phase == 0) & (j == 0))
  def _init():
    for ref in (ms_ref, mt_ref):
      ref[...] = jnp.full(ref.shape, NEG_INF, jnp.float32)
    for ref in (ls_ref, lt_ref, *sum_refs):
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
    for ref, x in zip(sum_refs, terms):
      ref[...] += jnp.sum(x, axis=1, keepdims=True)


def _dhidden(hs_ref, ws_ref, dz):
  return common.dot(dz.astype(ws_ref.dtype), ws_ref[...], trans_b=True)


def _dunembed(hs_ref, ws_ref, dz):
  return common.dot(hs_ref[...], dz, trans_a=True)


def _grad_kernel(spec, V, bv, vocab_axis, contribution, *refs):
  """One gradient: `contribution` (`_dhidden` or `_dunembed`) of every tile summed over grid axis 1
  into a float32 scratch; the vocabulary block is grid axis `vocab_axis`.

  refs: inputs hs, ws, ht, wt, tok, ct, ms, ls, mt, lt, G; the output; the scratch."""
  *in_refs, out_ref, acc_ref = refs
  hs_ref, ws_ref, ht_ref, wt_ref, tok_ref, ct_ref, ms_ref, ls_ref, mt_ref, lt_ref, g_ref = in_refs
  j, step = pl.program_id(vocab_axis), pl.program_id(1)

  @pl.when(step == 0)
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  zs_raw, zs, zt, cols, ok = _tiles(spec, hs_ref, ws_ref, ht_ref, wt_ref, j * bv, V)
  s = _logp(zs, ms_ref[...], ls_ref[...])
  t = _logp(zt, mt_ref[...], lt_ref[...])
  _, g = common.tile_terms(spec, s, t, ok, cols == tok_ref[...])
  dz = common.student_logit_grad(spec, s, g, g_ref[...], ct_ref[...], zs_raw, ok)
  acc_ref[...] += contribution(hs_ref, ws_ref, dz.astype(hs_ref.dtype))

  @pl.when(step == pl.num_programs(1) - 1)
  def _write():
    out_ref[...] = acc_ref[...].astype(out_ref.dtype)


# Mosaic's scoped-VMEM limit is capped here so that one setting compiles on v5e and v6e (128 MiB of
# VMEM per TensorCore) and v5p (64 MiB); default blocks are chosen to need at most VMEM_BUDGET.
VMEM_LIMIT_CAP = 60 * 2**20
VMEM_BUDGET = 48 * 2**20
DEFAULT_VMEM_LIMIT = 16 * 2**20  # Mosaic's own default


def vmem_bytes(
    bn: int,
    bv: int,
    ds: int,
    dt: int,
    student_itemsize: int,
    teacher_itemsize: Optional[int] = None,
) -> int:
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


def vmem_limit(need: float) -> int:
  """The vmem_limit_bytes the kernels request for an estimated need (ValueError above the cap)."""
  limit = max(DEFAULT_VMEM_LIMIT, -(-int(1.25 * need) // 2**20) * 2**20)
  if limit > VMEM_LIMIT_CAP:
    raise ValueError(
        f"the Pallas TPU divergence blocks need ~{need / 2**20:.0f} MiB of VMEM, more "
        f"than the {VMEM_LIMIT_CAP // 2**20} MiB every TPU generation has: pass a "
        "smaller token_block / vocab_block"
    )
  return limit


def choose_blocks(
    n: int,
    v: int,
    ds: int,
    dt: int,
    student_itemsize: int,
    teacher_itemsize: Optional[int],
    round_up: Callable[[int, int], int],
) -> tuple[int, int]:
  """(bn, bv): the largest of 256 x {512, 256, 128} (then 128 x 128) within VMEM_BUDGET, cut to N
  and V for small inputs. float32 operands need the smaller blocks."""
  bn_max, bv_max = min(256, round_up(n, 8)), min(512, round_up(v, 128))
  candidates = [(bn_max, min(bv, bv_max)) for bv in (512, 256, 128)] + [(min(128, bn_max), 128)]
  for bn, bv in candidates:
    if vmem_bytes(bn, bv, ds, dt, student_itemsize, teacher_itemsize) <= VMEM_BUDGET:
      return bn, bv
  return candidates[-1]


def _in_specs(args, bn, bv, row, col):
  """BlockSpecs of args = (hs, Ws, ht, Wt, per-token [Npad, 1] vectors...): hidden blocks [bn, D]
  at index map `row`, unembedding blocks [D, bv] at `col`."""
  hs, _, ht, _, *vectors = args
  ds, dt = hs.shape[1], ht.shape[1]
  matrices = [((bn, ds), row), ((ds, bv), col), ((bn, dt), row), ((dt, bv), col)]
  blocks = matrices + [((bn, 1), row)] * len(vectors)
  return [pl.BlockSpec(shape, index) for shape, index in blocks]


def _compiler_params(grid, bn, bv, hs, ht):
  """Grid axis 0 parallel, the others accumulated over; the VMEM limit the blocks need."""
  semantics = ("parallel",) + ("arbitrary",) * (len(grid) - 1)
  need = vmem_bytes(bn, bv, hs.shape[1], ht.shape[1], hs.dtype.itemsize, ht.dtype.itemsize)
  return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=vmem_limit(need))


def forward(
    spec: DivergenceSpec,
    V: int,
    hs: jax.Array,
    Ws: jax.Array,
    ht: jax.Array,
    Wt: jax.Array,
    tok_N1: jax.Array,
    *,
    bn: int,
    bv: int,
    interpret: Union[bool, pltpu.InterpretParams] = False,
) -> tuple[jax.Array, ...]:
  """Padded inputs -> (ms, ls, mt, lt, F, G, H_S, H_T, log p_S(tok)), each [Npad, 1] float32."""
  args = (hs, Ws, ht, Wt, tok_N1)
  grid = (hs.shape[0] // bn, 2, Ws.shape[1] // bv)
  row = lambda i, p, j: (i, 0)  # noqa: E731
  return pl.pallas_call(
      functools.partial(_fwd_kernel, spec, V, bv),
      grid=grid,
      in_specs=_in_specs(args, bn, bv, row, lambda i, p, j: (0, j)),
      out_specs=[pl.BlockSpec((bn, 1), row)] * 9,
      out_shape=[jax.ShapeDtypeStruct((hs.shape[0], 1), jnp.float32)] * 9,
      compiler_params=_compiler_params(grid, bn, bv, hs, ht),
      interpret=interpret,
      name="gkd_divergence_fwd",
  )(*args)


def backward(
    spec: DivergenceSpec,
    V: int,
    hs: jax.Array,
    Ws: jax.Array,
    ht: jax.Array,
    Wt: jax.Array,
    tok_N1: jax.Array,
    ct_N1: jax.Array,
    stats: Sequence[jax.Array],
    *,
    bn: int,
    bv: int,
    interpret: Union[bool, pltpu.InterpretParams] = False,
) -> tuple[jax.Array, jax.Array]:
  """Padded inputs, stats = (ms, ls, mt, lt, G) [Npad, 1] -> (d hs, d Ws)."""
  args = (hs, Ws, ht, Wt, tok_N1, ct_N1) + tuple(stats)
  grad = functools.partial(_grad, spec, V, args, bn=bn, bv=bv, interpret=interpret)
  return grad("hidden"), grad("unembed")


def _grad(spec, V, args, wrt, *, bn, bv, interpret):
  """d hs (wrt="hidden", grid (token blocks, vocab blocks)) or d Ws (wrt="unembed", grid (vocab
  blocks, token blocks)): the gradient's block stays resident while grid axis 1 is summed over."""
  hs, Ws, ht = args[:3]
  token_blocks, vocab_blocks = hs.shape[0] // bn, Ws.shape[1] // bv
  if wrt == "hidden":
    grid, vocab_axis, contribution = (token_blocks, vocab_blocks), 1, _dhidden
    row, col = (lambda i, j: (i, 0)), (lambda i, j: (0, j))
    out, out_spec = hs, pl.BlockSpec((bn, hs.shape[1]), row)
  else:
    grid, vocab_axis, contribution = (vocab_blocks, token_blocks), 0, _dunembed
    row, col = (lambda j, i: (i, 0)), (lambda j, i: (0, j))
    out, out_spec = Ws, pl.BlockSpec((hs.shape[1], bv), col)
  return pl.pallas_call(
      functools.partial(_grad_kernel, spec, V, bv, vocab_axis, contribution),
      grid=grid,
      in_specs=_in_specs(args, bn, bv, row, col),
      out_specs=out_spec,
      out_shape=jax.ShapeDtypeStruct(out.shape, out.dtype),
      scratch_shapes=[pltpu.VMEM(out_spec.block_shape, jnp.float32)],
      compiler_params=_compiler_params(grid, bn, bv, hs, ht),
      interpret=interpret,
      name=f"gkd_divergence_d{wrt}",
  )(*args)
