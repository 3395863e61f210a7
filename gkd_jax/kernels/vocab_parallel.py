"""Vocab-parallel fused divergence: the unembeddings' vocabulary axis is sharded over a mesh axis.

Inside `shard_map`, every shard streams over its own [D, V / n] slice of both unembeddings (chunked
passes, `chunked.py`) and only per-token vectors cross devices:

  pass 1  local (max, sum-exp) of student and teacher  -> pmax / psum of [N] vectors
  pass 2  local sums F, G with the global normalisers  -> psum of [N] vectors
  backward  d unembed stays on its shard; the [N, Ds] hidden-state gradient is psum-ed

No logits and no unembedding are ever gathered. The hidden states are replicated over the vocabulary
axis (they are [N, D], the usual layout under tensor parallelism after the final norm); their token
axis may be sharded over other mesh axes (``token_axes``, e.g. ("data", "fsdp")), in which case each
token shard runs independently and nothing crosses those axes at all.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from gkd_jax.kernels import chunked, common


def fused_linear_divergence(spec, hs, Ws, ht, Wt, tokens, *, mesh, vocab_axis, token_axes=None,
                            impl="chunked", vocab_block=None, token_block=None, hidden_block=None,
                            interpret=None):
  del impl, token_block, hidden_block, interpret  # every shard runs the chunked streaming passes
  if vocab_axis not in mesh.axis_names:
    raise ValueError(f"vocab_axis={vocab_axis!r} is not an axis of the mesh {mesh.axis_names}")
  token_axes = tuple(token_axes or ())
  for ax in token_axes:
    if ax not in mesh.axis_names or ax == vocab_axis:
      raise ValueError(f"token_axes={token_axes!r}: {ax!r} is not a mesh axis other than vocab_axis")
  n_token_shards = 1
  for ax in token_axes:
    n_token_shards *= mesh.shape[ax]
  if hs.shape[0] % n_token_shards:
    raise ValueError(f"{hs.shape[0]} tokens are not divisible by the {n_token_shards} shards of "
                     f"token_axes={token_axes!r}")
  n_shards = mesh.shape[vocab_axis]
  V = Ws.shape[1]
  if V % n_shards:
    raise ValueError(f"vocabulary size {V} is not divisible by mesh axis {vocab_axis!r} of size "
                     f"{n_shards} (vocab_axis={vocab_axis!r})")
  v_local = V // n_shards
  bv = min(vocab_block or chunked.DEFAULT_VOCAB_BLOCK, v_local)
  tok = jnp.zeros((hs.shape[0],), jnp.int32) if tokens is None else tokens.astype(jnp.int32)
  struct, values = spec.split()
  cfg = (struct, mesh, vocab_axis, bv, v_local, token_axes)
  return _vp(cfg, values, hs, Ws, ht, Wt, tok)


def _specs(cfg):
  """(replicated, vocab-sharded columns, token-sharded rows, token-sharded vectors)."""
  axis, token_axes = cfg[2], cfg[5]
  rows = token_axes if token_axes else None
  return P(), P(None, axis), P(rows, None), P(rows)


def _local_forward(cfg, values, hs, Ws, ht, Wt, tok):
  struct, _, axis, bv, v_local, _ = cfg
  spec = struct.bind(values)
  N = hs.shape[0]
  local_tok = tok - jax.lax.axis_index(axis) * v_local  # matches a local column on one shard only
  get = chunked._fused_tiles(hs, Ws, ht, Wt, bv)
  ms, ls, mt, lt = chunked.stats_pass(spec, get, N, v_local, bv)
  norms = ()
  for m, l in ((ms, ls), (mt, lt)):
    m_g = jax.lax.pmax(m, axis)
    m_safe = jnp.where(m_g == common.NEG_INF, 0.0, m_g)
    l_g = jax.lax.psum(l * jnp.exp(m - m_safe), axis)
    norms += common.stats_finalize(m_g, l_g)
  F, G = chunked.value_pass(spec, get, N, v_local, bv, local_tok, norms)
  F, G = jax.lax.psum(F, axis), jax.lax.psum(G, axis)
  return F, norms + (G,)


def _local_backward(cfg, values, hs, Ws, ht, Wt, tok, sh_s, ll_s, sh_t, ll_t, G, ct):
  struct, _, axis, bv, v_local, _ = cfg
  spec = struct.bind(values)
  local_tok = tok - jax.lax.axis_index(axis) * v_local
  dhs, dWs = chunked.fused_backward(spec, bv, hs, Ws, ht, Wt, local_tok, (sh_s, ll_s, sh_t, ll_t),
                                    G, ct)
  token_axes = cfg[5]
  if token_axes:  # the unembedding gradient sums over every token shard (the data-parallel reduce)
    dWs = jax.lax.psum(dWs.astype(jnp.float32), token_axes).astype(Ws.dtype)
  return jax.lax.psum(dhs, axis).astype(hs.dtype), dWs


def _forward_sharded(cfg, values, hs, Ws, ht, Wt, tok):
  rep, col, rows, vec = _specs(cfg)
  f = jax.shard_map(functools.partial(_local_forward, cfg), mesh=cfg[1],
                    in_specs=(rep, rows, col, rows, col, vec), out_specs=(vec, (vec,) * 5),
                    check_vma=False)
  return f(values, hs, Ws, ht, Wt, tok)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _vp(cfg, values, hs, Ws, ht, Wt, tok):
  return _forward_sharded(cfg, values, hs, Ws, ht, Wt, tok)[0]


def _vp_fwd(cfg, values, hs, Ws, ht, Wt, tok):
  F, res = _forward_sharded(cfg, values, hs, Ws, ht, Wt, tok)
  return F, (values, hs, Ws, ht, Wt, tok, res)


def _vp_bwd(cfg, residuals, ct):
  values, hs, Ws, ht, Wt, tok, res = residuals
  rep, col, rows, vec = _specs(cfg)
  f = jax.shard_map(functools.partial(_local_backward, cfg), mesh=cfg[1],
                    in_specs=(rep, rows, col, rows, col, vec) + (vec,) * 6, out_specs=(rows, col),
                    check_vma=False)
  dhs, dWs = f(values, hs, Ws, ht, Wt, tok, *res, ct.astype(jnp.float32))
  return None, dhs, dWs, None, None, None


_vp.defvjp(_vp_fwd, _vp_bwd)
