"""One model's streaming quantities: cross-entropy of given tokens and the entropy of p = softmax(z).

The GKD loss is the divergence between two models (`fused_linear_divergence`, which also returns
both entropies). A run also needs the cross-entropy of dataset tokens (the SFT term) and, when there
is no teacher, the student's entropy. Both need only the log-normaliser log sum_v exp(z_v) (and, for
the entropy, E_p[z]), accumulated over the same vocabulary blocks with the same online statistics as
every other kernel (`common.stats_update`); `jax.checkpoint` on the block body keeps the backward
pass streaming too, so no [N, V] array exists.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from gkd_jax.kernels import chunked, common
from gkd_jax.kernels.layout import Layout

DEFAULT_VOCAB_BLOCK = 2048


def logsumexp_and_mean_logit(
    hidden_NxD: jax.Array,
    unembed_DxV: jax.Array,
    *,
    softcap: Optional[float] = None,
    temperature: float = 1.0,
    vocab_block: int = DEFAULT_VOCAB_BLOCK,
) -> tuple[jax.Array, jax.Array]:
  """(log sum_v e^{z_v}, sum_v p_v z_v) per token, z = softcap(h W) / temperature, one pass."""
  v = unembed_DxV.shape[1]
  bv = min(vocab_block, v)
  n = hidden_NxD.shape[0]

  @jax.checkpoint
  def body(carry, j):
    m_N, l_N, mz_N = carry  # online statistics and the running sum of e^{z - m} z
    start, _, ok_K = chunked.block(j, bv, v)
    cols_DxK = jax.lax.dynamic_slice_in_dim(unembed_DxV, start, bv, axis=1)
    z_NxK = common.scale(common.dot(hidden_NxD, cols_DxK), softcap, temperature)
    z_NxK = jnp.where(ok_K[None, :], z_NxK, common.NEG_INF)
    m_new, l_new = common.stats_update(m_N, l_N, z_NxK)
    shift_N, _ = common.stats_finalize(m_new, l_new)
    e_NxK = jnp.exp(z_NxK - shift_N[:, None])
    z_finite = jnp.where(jnp.isfinite(z_NxK), z_NxK, 0.0)
    mz_new = mz_N * jnp.exp(m_N - shift_N) + jnp.sum(e_NxK * z_finite, axis=-1)
    return (m_new, l_new, mz_new), None

  init = common.stats_init((n,)) + (jnp.zeros((n,), jnp.float32),)
  (m_N, l_N, mz_N), _ = jax.lax.scan(body, init, jnp.arange(-(-v // bv)))
  shift_N, log_l_N = common.stats_finalize(m_N, l_N)
  return shift_N + log_l_N, mz_N / l_N


def cross_entropy(
    hidden_NxD: jax.Array,
    unembed_DxV: jax.Array,
    targets_N: jax.typing.ArrayLike,
    *,
    softcap: Optional[float] = None,
    vocab_block: int = DEFAULT_VOCAB_BLOCK,
) -> jax.Array:
  """-log p(target) per token at temperature 1, without materialising [N, V] logits."""
  lse_N, _ = logsumexp_and_mean_logit(
      hidden_NxD, unembed_DxV, softcap=softcap, vocab_block=vocab_block
  )
  cols_NxD = jnp.take(unembed_DxV, targets_N, axis=1).T
  z_N = jnp.sum(hidden_NxD.astype(jnp.float32) * cols_NxD.astype(jnp.float32), axis=-1)
  return lse_N - common.scale(z_N, softcap, 1.0)


def entropy(
    hidden_NxD: jax.Array,
    unembed_DxV: jax.Array,
    *,
    softcap: Optional[float] = None,
    temperature: float = 1.0,
    vocab_block: int = DEFAULT_VOCAB_BLOCK,
    layout: Optional[Layout] = None,
) -> jax.Array:
  """Entropy (nats) of softmax(softcap(h W) / temperature) per token: H = log Z - E_p[z].

  With `layout.vocab_axis` set, each device reduces its own columns and only [N] statistics are
  combined, so the unembedding is never gathered."""
  kw = dict(softcap=softcap, temperature=temperature, vocab_block=vocab_block)
  if layout is None or layout.vocab_axis is None:
    lse_N, mean_z_N = logsumexp_and_mean_logit(hidden_NxD, unembed_DxV, **kw)
    return lse_N - mean_z_N
  axis = layout.vocab_axis

  def local(h, w):
    lse_N, mean_z_N = logsumexp_and_mean_logit(h, w, **kw)
    total_N = sum(common.stats_finalize(*common.stats_allreduce(lse_N, jnp.ones_like(lse_N), axis)))
    return total_N - jax.lax.psum(jnp.exp(lse_N - total_N) * mean_z_N, axis)

  return jax.shard_map(
      local,
      mesh=layout.mesh,
      in_specs=(layout.rows, layout.columns),
      out_specs=layout.vector,
      check_vma=False,
  )(hidden_NxD, unembed_DxV)
