"""Token-level cross-entropy and entropy from hidden states, streamed over the vocabulary.

The GKD loss itself lives in `gkd_jax.kernels` (the divergence between two models). The trainer
also needs two single-model quantities: the cross-entropy of dataset tokens (the SFT term) and the
entropy of each model's next-token distribution (a metric). Both need only the log-normaliser
log Σ_v exp(z_v), which we accumulate over vocabulary blocks with an online log-sum-exp so that no
[N, V] array exists; `jax.checkpoint` on the block body keeps the backward pass streaming too.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def _block_logits(hidden_NxD, unembed_DxV, start, block, vocab, softcap, temperature):
  """Logits of vocabulary columns [start, start+block) in float32, -inf past `vocab`."""
  cols_DxK = jax.lax.dynamic_slice_in_dim(unembed_DxV, start, block, axis=1)
  z_NxK = jnp.dot(hidden_NxD, cols_DxK, preferred_element_type=jnp.float32)
  if softcap is not None:
    z_NxK = softcap * jnp.tanh(z_NxK / softcap)
  z_NxK = z_NxK / temperature
  valid_K = start + jnp.arange(block) < vocab
  return jnp.where(valid_K[None, :], z_NxK, -jnp.inf)


def _pad_vocab(unembed_DxV, block):
  v = unembed_DxV.shape[1]
  num_blocks = -(-v // block)
  pad = num_blocks * block - v
  if pad:
    unembed_DxV = jnp.pad(unembed_DxV, ((0, 0), (0, pad)))
  return unembed_DxV, num_blocks


def logsumexp_and_mean_logit(hidden_NxD, unembed_DxV, *, softcap: Optional[float] = None,
                             temperature: float = 1.0, block_size: int = 2048):
  """Returns (log Σ_v e^{z_v}, Σ_v p_v z_v) per token, z = softcap(h·W)/τ, streamed over V."""
  block = min(block_size, unembed_DxV.shape[1])
  v = unembed_DxV.shape[1]
  padded_DxV, num_blocks = _pad_vocab(unembed_DxV, block)
  n = hidden_NxD.shape[0]

  @jax.checkpoint
  def body(carry, i):
    m_N, s_N, t_N = carry  # running max, Σ e^{z-m}, Σ e^{z-m}·z
    z_NxK = _block_logits(hidden_NxD, padded_DxV, i * block, block, v, softcap, temperature)
    m_new = jnp.maximum(m_N, jnp.max(z_NxK, axis=-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    scale_N = jnp.exp(m_N - m_safe)
    e_NxK = jnp.exp(z_NxK - m_safe[:, None])
    z_finite = jnp.where(jnp.isfinite(z_NxK), z_NxK, 0.0)
    s_new = s_N * scale_N + jnp.sum(e_NxK, axis=-1)
    t_new = t_N * scale_N + jnp.sum(e_NxK * z_finite, axis=-1)
    return (m_new, s_new, t_new), None

  init = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32),
          jnp.zeros((n,), jnp.float32))
  (m_N, s_N, t_N), _ = jax.lax.scan(body, init, jnp.arange(num_blocks))
  lse_N = m_N + jnp.log(s_N)
  return lse_N, t_N / s_N


def cross_entropy(hidden_NxD, unembed_DxV, targets_N, *, softcap=None, block_size=2048):
  """-log p(target) per token at temperature 1, without materialising [N, V] logits."""
  lse_N, _ = logsumexp_and_mean_logit(hidden_NxD, unembed_DxV, softcap=softcap,
                                      block_size=block_size)
  cols_NxD = jnp.take(unembed_DxV, targets_N, axis=1).T
  z_N = jnp.sum(hidden_NxD.astype(jnp.float32) * cols_NxD.astype(jnp.float32), axis=-1)
  if softcap is not None:
    z_N = softcap * jnp.tanh(z_N / softcap)
  return lse_N - z_N


def entropy(hidden_NxD, unembed_DxV, *, softcap=None, temperature=1.0, block_size=2048):
  """Entropy (nats) of softmax(softcap(h·W)/τ) per token: H = log Z - E_p[z]."""
  lse_N, mean_z_N = logsumexp_and_mean_logit(hidden_NxD, unembed_DxV, softcap=softcap,
                                             temperature=temperature, block_size=block_size)
  return lse_N - mean_z_N
