"""Sharded fused divergence: tokens over `Layout.token_axes`, vocabulary over `Layout.vocab_axis`.

Token-parallel only (no vocab axis): `token_parallel` runs any per-device implementation (chunked,
Pallas) on each device's own tokens; a custom kernel is opaque to XLA's partitioner, so without the
shard_map every device would compute the whole global batch.

Vocab-parallel: inside `shard_map`, every shard streams over its own [D, V / n] slice of both
unembeddings (chunked passes, `chunked.py`) and only per-token vectors cross devices:

  pass 1  local (max, sum-exp) of student and teacher  -> merged over the axis (`stats_allreduce`)
  pass 2  local sums F, G, H_S, H_T, log p_S(tok) with the global normalisers -> psum of [N] vectors
  backward  d unembed stays on its shard; the [N, Ds] hidden-state gradient is psum-ed

No logits and no unembedding are ever gathered. The hidden states are replicated over the vocabulary
axis (they are [N, D], the usual layout under tensor parallelism after the final norm); tokens sharded
over other axes run independently and nothing crosses those axes at all.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from gkd_jax.divergences import DivergenceSpec
from gkd_jax.kernels import chunked, common
from gkd_jax.kernels.layout import Layout


def token_parallel(
    local_fn: Callable[..., chunked.Vectors4],
    layout: Layout,
    hs: jax.Array,
    Ws: jax.Array,
    ht: jax.Array,
    Wt: jax.Array,
    tok: jax.Array,
) -> chunked.Vectors4:
  """local_fn(hs, Ws, ht, Wt, tok) -> (F, H_S, H_T, log p_S(tok)) [n], on each device's tokens."""
  layout.check_tokens(hs.shape[0])
  rows, vec, rep = layout.rows, layout.vector, P()
  return jax.shard_map(
      local_fn,
      mesh=layout.mesh,
      in_specs=(rows, rep, rows, rep, vec),
      out_specs=(vec,) * 4,
      check_vma=False,
  )(hs, Ws, ht, Wt, tok)


@dataclasses.dataclass(frozen=True)
class _Static:
  struct: common.Structure
  layout: Layout
  vocab_block: int
  local_vocab: int


def fused(
    spec: DivergenceSpec,
    layout: Layout,
    hs: jax.Array,
    Ws: jax.Array,
    ht: jax.Array,
    Wt: jax.Array,
    tok: jax.Array,
    *,
    vocab_block: Optional[int] = None,
) -> chunked.Vectors4:
  """(F, H_S, H_T, log p_S(tok)) [N], vocabulary sharded over layout.vocab_axis; gradient to hs,
  Ws."""
  layout.check_tokens(hs.shape[0])
  n_shards = layout.vocab_shards
  V = Ws.shape[1]
  if V % n_shards:
    raise ValueError(
        f"vocabulary size {V} is not divisible by mesh axis {layout.vocab_axis!r} of "
        f"size {n_shards} (vocab_axis={layout.vocab_axis!r})"
    )
  v_local = V // n_shards
  struct, values = common.split(spec)
  static = _Static(
      struct, layout, min(vocab_block or chunked.DEFAULT_VOCAB_BLOCK, v_local), v_local
  )
  return _vp(static, values, hs, Ws, ht, Wt, tok)


def _in_specs(layout: Layout):
  rows, vec, col = layout.rows, layout.vector, layout.columns
  return (P(), rows, col, rows, col, vec)


def _local_tokens(st: _Static, tok):
  """Sampled ids relative to this shard's columns (matches a local column on one shard only)."""
  return tok - jax.lax.axis_index(st.layout.vocab_axis) * st.local_vocab


def _local_forward(st: _Static, values, hs, Ws, ht, Wt, tok):
  spec, axis = st.struct.bind(values), st.layout.vocab_axis
  N, bv = hs.shape[0], st.vocab_block
  get = chunked.fused_tiles(hs, Ws, ht, Wt, bv)
  ms, ls, mt, lt = chunked.stats_pass(spec, get, N, st.local_vocab, bv)
  norms = common.stats_finalize(*common.stats_allreduce(ms, ls, axis)) + common.stats_finalize(
      *common.stats_allreduce(mt, lt, axis)
  )
  sums = chunked.value_pass(spec, get, N, st.local_vocab, bv, _local_tokens(st, tok), norms)
  F, G, *stats = (jax.lax.psum(x, axis) for x in sums)
  return (F, *stats), norms + (G,)


def _local_backward(st: _Static, values, hs, Ws, ht, Wt, tok, sh_s, ll_s, sh_t, ll_t, G, ct):
  spec, axis = st.struct.bind(values), st.layout.vocab_axis
  dhs, dWs = chunked.fused_backward(
      spec, st.vocab_block, hs, Ws, ht, Wt, _local_tokens(st, tok), (sh_s, ll_s, sh_t, ll_t), G, ct
  )
  if st.layout.token_axes:  # the unembedding gradient sums over every token shard
    dWs = jax.lax.psum(dWs.astype(jnp.float32), st.layout.token_axes).astype(Ws.dtype)
  return jax.lax.psum(dhs, axis).astype(hs.dtype), dWs


def _forward_sharded(st: _Static, values, hs, Ws, ht, Wt, tok):
  vec = st.layout.vector
  f = jax.shard_map(
      functools.partial(_local_forward, st),
      mesh=st.layout.mesh,
      in_specs=_in_specs(st.layout),
      out_specs=((vec,) * 4, (vec,) * 5),
      check_vma=False,
  )
  return f(values, hs, Ws, ht, Wt, tok)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _vp(st, values, hs, Ws, ht, Wt, tok):
  return _forward_sharded(st, values, hs, Ws, ht, Wt, tok)[0]


def _vp_fwd(st, values, hs, Ws, ht, Wt, tok):
  outs, res = _forward_sharded(st, values, hs, Ws, ht, Wt, tok)
  return outs, (values, hs, Ws, ht, Wt, tok, res)


def _vp_bwd(st, residuals, cts):
  values, hs, Ws, ht, Wt, tok, res = residuals
  layout = st.layout
  f = jax.shard_map(
      functools.partial(_local_backward, st),
      mesh=layout.mesh,
      in_specs=_in_specs(layout) + (layout.vector,) * 6,
      out_specs=(layout.rows, layout.columns),
      check_vma=False,
  )
  dhs, dWs = f(values, hs, Ws, ht, Wt, tok, *res, cts[0].astype(jnp.float32))
  return None, dhs, dWs, None, None, None


_vp.defvjp(_vp_fwd, _vp_bwd)
