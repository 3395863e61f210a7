"""impl="pallas": custom VJP around the Pallas kernels, dispatched by the platform being lowered for.

`jax.lax.platform_dependent` picks, at lowering time, Mosaic kernels for TPU (`pallas_tpu.py`), the
Triton forward kernel for CUDA (`pallas_gpu.py`, whose backward is the chunked XLA pass: per vocabulary
block the two contractions are large GEMMs that cuBLAS does better than a hand-tiled Triton loop), and
the chunked XLA pass on any other platform. ``interpret=None`` (default) runs the TPU kernels in
interpret mode when the default backend is CPU (the tests); pass ``interpret=False`` to export the real
kernels from a CPU host with ``jax.export(..., platforms=["tpu"])`` or ``["cuda"]``.

Ragged shapes: N and V are zero-padded up to the block sizes (a copy, only when they do not divide);
padded vocabulary columns are masked inside the kernels, padded tokens get a zero cotangent.
"""

from __future__ import annotations

import functools
from typing import Optional, Union

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

from gkd_jax.divergences import DivergenceSpec
from gkd_jax.kernels import chunked, common, pallas_gpu, pallas_tpu

TPU_TOKEN_BLOCK = 256
TPU_VOCAB_BLOCK = 512


_round_up, _pad_to = common.round_up, common.pad_to


def block_sizes(
    N: int,
    V: int,
    token_block: Optional[int] = None,
    vocab_block: Optional[int] = None,
    *,
    dims: Optional[tuple[int, int]] = None,
    itemsizes: tuple[int, int] = (2, 2),
) -> tuple[int, int]:
  """(token block, vocab block) of the TPU kernels. Defaults: 256 x 512 for bf16 operands; with
  `dims` = (Ds, Dt) and the operands' `itemsizes`, the largest blocks within the VMEM budget
  (float32 operands need smaller vocabulary blocks, `pallas_tpu.choose_blocks`)."""
  if dims is None:
    bn, bv = min(TPU_TOKEN_BLOCK, _round_up(N, 8)), min(TPU_VOCAB_BLOCK, _round_up(V, 128))
  else:
    bn, bv = pallas_tpu.choose_blocks(N, V, *dims, *itemsizes, _round_up)
  return token_block or bn, vocab_block or bv


def _use_interpret(interpret):
  """None: interpret on a CPU host; False: real kernels (e.g. `jax.export` for TPU/CUDA from CPU)."""
  if interpret is None:
    return jax.default_backend() == "cpu"
  return bool(interpret)


def _interpret_params(interpret):
  if interpret is True or interpret is None:
    return pltpu.InterpretParams()
  return interpret


def fused(
    spec: DivergenceSpec,
    hs: jax.Array,
    Ws: jax.Array,
    ht: jax.Array,
    Wt: jax.Array,
    tok: jax.Array,
    *,
    blocks: tuple[Optional[int], Optional[int], Optional[int]] = (None, None, None),
    interpret: Union[bool, pltpu.InterpretParams, None] = None,
) -> chunked.Vectors4:
  """blocks: (vocab_block, token_block, hidden_block), each None for its default."""
  vocab_block, token_block, hidden_block = blocks
  N, V = hs.shape[0], Ws.shape[1]
  bn, bv = block_sizes(
      N,
      V,
      token_block,
      vocab_block,
      dims=(hs.shape[1], ht.shape[1]),
      itemsizes=(hs.dtype.itemsize, ht.dtype.itemsize),
  )
  cfg = (bn, bv, hidden_block, interpret)  # static: interpret may be a (hashable) InterpretParams
  return _fused(spec, cfg, hs, Ws, ht, Wt, tok)


def _pad_inputs(bn, bv, hs, Ws, ht, Wt, tok):
  N, V = hs.shape[0], Ws.shape[1]
  n, v = _round_up(N, bn), _round_up(V, bv)
  return (
      _pad_to(hs, 0, n),
      _pad_to(Ws, 1, v),
      _pad_to(ht, 0, n),
      _pad_to(Wt, 1, v),
      _pad_to(tok, 0, n)[:, None],
  )


def _forward_all(spec, cfg, hs, Ws, ht, Wt, tok):
  """((F, H_S, H_T, log p_S(tok)) [N], stats (ms, ls, mt, lt, G) [N, 1]) on the platform being
  lowered for."""
  bn, bv, hidden_block, interpret = cfg
  N, V = hs.shape[0], Ws.shape[1]
  padded = _pad_inputs(bn, bv, hs, Ws, ht, Wt, tok)

  def tpu(interp):
    def run():
      outs = pallas_tpu.forward(spec, V, *padded, bn=bn, bv=bv, interpret=interp)
      return tuple(x[:N] for x in outs)

    return run

  def gpu():  # the Triton kernel's own token and vocabulary blocks (the TPU ones suit VMEM)
    bd = hidden_block or pallas_gpu.HIDDEN_BLOCK
    return pallas_gpu.forward(
        spec, V, hs, Ws, ht, Wt, tok, bn=pallas_gpu.TOKEN_BLOCK, bv=pallas_gpu.VOCAB_BLOCK, bd=bd
    )

  def other():  # any other platform: the chunked XLA forward, in the same output format
    struct, values = common.split(spec)
    (F, *stats), (sh_s, ll_s, sh_t, ll_t, G) = chunked.forward(
        struct.bind(values), chunked.fused_tiles(hs, Ws, ht, Wt, min(bv, V)), N, V, min(bv, V), tok
    )
    return tuple(x[:, None] for x in (sh_s, jnp.exp(ll_s), sh_t, jnp.exp(ll_t), F, G, *stats))

  if _use_interpret(interpret):
    outs = tpu(_interpret_params(interpret))()
  else:
    outs = jax.lax.platform_dependent(tpu=tpu(False), cuda=gpu, default=other)
  ms, ls, mt, lt, F, G, *stats = outs
  return (F[:, 0], *(x[:, 0] for x in stats)), (ms, ls, mt, lt, G)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused(spec, cfg, hs, Ws, ht, Wt, tok):
  return _forward_all(spec, cfg, hs, Ws, ht, Wt, tok)[0]


def _fused_fwd(spec, cfg, hs, Ws, ht, Wt, tok):
  outs, stats = _forward_all(spec, cfg, hs, Ws, ht, Wt, tok)
  return outs, (hs, Ws, ht, Wt, tok, stats)


def _fused_bwd(spec, cfg, residuals, cts):
  ct = cts[0]  # the metrics get no gradient
  hs, Ws, ht, Wt, tok, stats = residuals
  bn, bv, _, interpret = cfg
  N, V = hs.shape[0], Ws.shape[1]
  ct = ct.astype(jnp.float32)

  def tpu(interp):
    def run():
      padded = _pad_inputs(bn, bv, hs, Ws, ht, Wt, tok)
      n = padded[0].shape[0]
      ct_p = _pad_to(ct, 0, n)[:, None]
      # Padded tokens: finite statistics (max 0, sum 1) so that their zero cotangent stays zero.
      stats_p = tuple(_pad_to(x, 0, n, value) for x, value in zip(stats, (0, 1, 0, 1, 0)))
      dh, dw = pallas_tpu.backward(spec, V, *padded, ct_p, stats_p, bn=bn, bv=bv, interpret=interp)
      return dh[:N], dw[:, :V]

    return run

  def gpu():  # chunked XLA backward from the kernel's statistics (also the non-TPU/GPU fallback)
    ms, ls, mt, lt, G = (x[:, 0] for x in stats)
    norms = common.stats_finalize(ms, ls) + common.stats_finalize(mt, lt)
    bvc = min(chunked.DEFAULT_VOCAB_BLOCK, V)
    dh, dw = chunked.fused_backward(spec, bvc, hs, Ws, ht, Wt, tok, norms, G, ct)
    return dh.astype(hs.dtype), dw

  if _use_interpret(interpret):
    dh, dw = tpu(_interpret_params(interpret))()
  else:
    dh, dw = jax.lax.platform_dependent(tpu=tpu(False), cuda=gpu, default=gpu)
  return dh, dw, None, None, None


_fused.defvjp(_fused_fwd, _fused_bwd)
