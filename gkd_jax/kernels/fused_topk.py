"""Top-k divergence fused with the student's unembedding: never builds the [N, V] logits.

The (k+1)-way math is `gkd_jax.divergences.topk`'s; what the student contributes to it is three per-token
statistics of its scaled logits ``z = scale(hidden @ unembed)``:

  zk [N, k]     z at the teacher's top-k ids K,
  lse_all [N]   log-sum-exp of z over the vocabulary,
  lse_out [N]   log-sum-exp of z over the columns outside K (the exact tail, not log(1 - sum)).

`student_stats` streams them over vocabulary blocks (online log-sum-exp, `common.stats_*`): per block
one [N, vocab_block] tile of logits, K's columns in the block gathered into zk and set to -inf (a
scatter of at most N*k entries) for lse_out. Its custom VJP streams once more and recomputes each tile:

  d z_v = a p_v + b q_v [v not in K] + sum_i c_i [v = K_i],

with (a, b, c) the cotangents of (log l_all, log l_out, zk), ``p = exp(z - lse_all)``,
``q = exp(z - lse_out)``; then ``d z_raw = d z * scale'`` is contracted at once:
``d hidden += d z_raw @ W_blk^T``, ``d W_blk = hidden^T @ d z_raw`` written in place. The live
temporaries are O(N (vocab_block + k) + N D); the residuals are the inputs and O(N) statistics.

Ragged vocabularies: the last block is shifted left to end at V and its columns shared with the previous
block are left out of every reduction (their gradient columns are recomputed identically).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from gkd_jax import divergences
from gkd_jax.divergences import topk
from gkd_jax.divergences import DivergenceSpec
from gkd_jax.kernels import common
from gkd_jax.kernels.layout import Layout

DEFAULT_VOCAB_BLOCK = 512


def _block(j, bv, V):
  """(start, owned) of vocabulary block j: the tile covers [start, start + bv); owned [bv] bool marks
  the columns this block counts (>= j * bv)."""
  start = jnp.minimum(j * bv, V - bv)
  return start, (start + jnp.arange(bv)) >= j * bv


def _scaled_tile(hs, W, start, bv, softcap, temperature):
  w = jax.lax.dynamic_slice_in_dim(W, start, bv, axis=1)
  z_raw = common.dot(hs, w)
  return z_raw, common.scale(z_raw, softcap, temperature), w


def _local(ids, start, bv):
  """(local column of each id in the tile, or bv when outside it; in-tile mask)."""
  inside = (ids >= start) & (ids < start + bv)
  return jnp.where(inside, ids - start, bv), inside


def _dscale(z_raw, softcap, temperature):
  """d scale(z) / dz."""
  if softcap is None:
    return jnp.full(z_raw.shape, 1.0 / temperature, jnp.float32)
  th = jnp.tanh(z_raw / softcap)
  return (1.0 - th * th) / temperature


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def student_stats(
    softcap: float | None,
    temperature: float,
    bv: int,
    hs: jax.Array,
    W: jax.Array,
    ids: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """(zk [N, k], shift [N], log_l [N], shift_out [N], log_l_out [N]) of z = scale(hs @ W).

  lse = shift + log l; the shifts carry no gradient (callers stop_gradient them, `topk.student_kplus1`).
  """
  return _stats_fwd(softcap, temperature, bv, hs, W, ids)[0]


def _stats_fwd(softcap, temperature, bv, hs, W, ids):
  N, V, k = hs.shape[0], W.shape[1], ids.shape[1]
  rows = jnp.arange(N)[:, None]

  def body(j, carry):
    m, l, mo, lo, zk = carry
    start, owned = _block(j, bv, V)
    _, z, _ = _scaled_tile(hs, W, start, bv, softcap, temperature)
    local, inside = _local(ids, start, bv)
    zk = jnp.where(inside, jnp.take_along_axis(z, jnp.minimum(local, bv - 1), axis=1), zk)
    z_out = z.at[rows, local].set(common.NEG_INF, mode="drop")
    m, l = common.stats_update(m, l, z, owned[None, :])
    mo, lo = common.stats_update(mo, lo, z_out, owned[None, :])
    return m, l, mo, lo, zk

  init = common.stats_init((N,)) + common.stats_init((N,)) + (jnp.zeros((N, k), jnp.float32),)
  m, l, mo, lo, zk = jax.lax.fori_loop(0, -(-V // bv), body, init)
  shift, log_l = common.stats_finalize(m, l)
  shift_o, log_lo = common.stats_finalize(mo, lo)
  out = (zk, shift, log_l, shift_o, log_lo)
  return out, (hs, W, ids, shift, log_l, shift_o, log_lo)


def _stats_bwd(softcap, temperature, bv, residuals, cts):
  hs, W, ids, shift, log_l, shift_o, log_lo = residuals
  c, _, a, _, b = (x.astype(jnp.float32) for x in cts)  # the shifts' cotangents are zero
  N, V = hs.shape[0], W.shape[1]
  rows = jnp.arange(N)[:, None]
  out_alive = log_lo > common.NEG_INF
  b = jnp.where(out_alive, b, 0.0)
  log_lo_safe = jnp.where(out_alive, log_lo, 0.0)

  def body(j, carry):
    dhs, dW = carry
    start, owned = _block(j, bv, V)
    z_raw, z, w = _scaled_tile(hs, W, start, bv, softcap, temperature)
    local, _ = _local(ids, start, bv)
    p = jnp.exp((z - shift[:, None]) - log_l[:, None])
    q = jnp.exp((z - shift_o[:, None]) - log_lo_safe[:, None])
    q = q.at[rows, local].set(0.0, mode="drop")
    dz = a[:, None] * p + b[:, None] * q
    dz = dz.at[rows, local].add(c, mode="drop")
    dz = (dz * _dscale(z_raw, softcap, temperature)).astype(hs.dtype)
    dW = jax.lax.dynamic_update_slice_in_dim(
        dW, common.dot(hs, dz, trans_a=True).astype(W.dtype), start, axis=1
    )
    dz_owned = jnp.where(owned[None, :], dz, 0).astype(hs.dtype)
    dhs = dhs + common.dot(dz_owned, w, trans_b=True)
    return dhs, dW

  init = (jnp.zeros(hs.shape, jnp.float32), jnp.zeros(W.shape, W.dtype))
  dhs, dW = jax.lax.fori_loop(0, -(-V // bv), body, init)
  return dhs.astype(hs.dtype), dW, None


student_stats.defvjp(_stats_fwd, _stats_bwd)


def fused_linear_topk_divergence(
    student_hidden: jax.Array,
    student_unembed: jax.Array,
    teacher_topk_ids: jax.typing.ArrayLike,
    teacher_topk_logprobs: jax.typing.ArrayLike,
    spec: DivergenceSpec | None = None,
    *,
    tokens: jax.typing.ArrayLike | None = None,
    vocab_block: int | None = None,
    layout: Layout | None = None,
    **hyperparameters: Any,
) -> jax.Array:
  """Per-token top-k divergence [N] float32 of softmax(student_hidden @ student_unembed) against the
  teacher's top-k log-probabilities (`gkd_jax.divergences.topk_divergence` semantics).

  student_hidden [N, D], student_unembed [D, V], teacher_topk_ids [N, k] int, teacher_topk_logprobs
  [N, k]; ``spec`` (a `DivergenceSpec`; its teacher_softcap is unused: the cached log-probabilities
  are already the teacher's) or its fields by keyword (kind, beta, alpha, temperature,
  student_softcap); ``tokens`` [N] for kind="sampled_reverse_kl" only; ``vocab_block``: the
  streaming tile (default 512, capped at V); ``layout``: tokens sharded over ``layout.token_axes``
  run on their own devices (a sharded vocabulary is not supported here). Gradients reach
  student_hidden and student_unembed only. The hyperparameters must be Python numbers.
  """
  hs, W = student_hidden, student_unembed
  ids, lp = jnp.asarray(teacher_topk_ids), jnp.asarray(teacher_topk_logprobs)
  spec = divergences.as_spec(spec, hyperparameters, tokens=tokens)
  for name, x in (("student_hidden", hs), ("student_unembed", W)):
    if x.ndim != 2:
      raise ValueError(f"{name}.shape={tuple(x.shape)} must have 2 dimensions")
  if hs.shape[1] != W.shape[0]:
    raise ValueError(
        f"student_hidden.shape={tuple(hs.shape)} does not match "
        f"student_unembed.shape={tuple(W.shape)} (hidden size)"
    )
  if vocab_block is not None and (not isinstance(vocab_block, int) or vocab_block <= 0):
    raise ValueError(f"vocab_block={vocab_block!r} must be a positive int")
  V = W.shape[1]
  topk.validate_topk_args(V, hs.shape[:1], ids, lp, tokens)
  for name in ("beta", "alpha", "temperature", "student_softcap"):
    value = getattr(spec, name)
    if value is not None and not isinstance(value, numbers.Real):
      raise ValueError(f"{name}={value!r} must be a Python number for the fused kernel")
  bv = min(vocab_block or DEFAULT_VOCAB_BLOCK, V)
  tok = jnp.zeros(hs.shape[:1], jnp.int32) if tokens is None else jnp.asarray(tokens, jnp.int32)
  local = functools.partial(_one_device, spec, bv, tokens is not None)
  args = (hs, W, ids.astype(jnp.int32), lp, tok)
  if layout is None or layout.token_shards == 1 and layout.vocab_axis is None:
    return local(*args)
  if layout.vocab_axis is not None:
    raise ValueError(
        f"layout.vocab_axis={layout.vocab_axis!r}: the top-k divergence does not "
        "support a sharded vocabulary (use a layout with token_axes only)"
    )
  layout.check_tokens(hs.shape[0])
  rows, vec = layout.rows, layout.vector
  return jax.shard_map(
      local, mesh=layout.mesh, in_specs=(rows, P(), rows, rows, vec), out_specs=vec, check_vma=False
  )(*args)


def _one_device(spec, bv, has_tokens, hs, W, ids, lp, tok):
  """The divergence [n] of one device's tokens (whole vocabulary)."""
  cap = None if spec.student_softcap is None else float(spec.student_softcap)
  zk, shift, log_l, shift_o, log_lo = student_stats(cap, float(spec.temperature), bv, hs, W, ids)
  s_k1 = topk.student_kplus1(zk, shift, log_l, shift_o, log_lo)
  t_k1 = topk.teacher_kplus1(lp, W.shape[1])
  bucket = topk.bucket_of(tok, ids) if has_tokens else None
  return topk.kplus1_divergence(
      s_k1, t_k1, kind=spec.kind, beta=float(spec.beta), alpha=float(spec.alpha), bucket=bucket
  )
