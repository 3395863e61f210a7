"""Top-k divergences: every divergence kind on the (k+1)-way distributions of a teacher's top-k tokens.

With K the teacher's top-k ids at a position (distinct), both models' distributions are reduced to
k+1 outcomes: the k tokens of K and one tail bucket for the rest,

  p(i) for i in K,   p(tail) = 1 - sum_{i in K} p(i),

and the kinds of `gkd_jax.divergences` are applied to these (k+1)-way distributions (by calling
`divergences.token_divergence` on their log-probabilities, so no kind is written twice).

Teacher: ``teacher_topk_logprobs`` are log-probabilities of its full tempered distribution (e.g. read
from a cache), so their exp sums to <= 1; ``log p_T(tail) = log(1 - exp(lse_K))`` is formed with
``log(-expm1(x))`` / ``log1p(-exp(x))`` (whichever is exact for x), and is ``-inf`` when the sum
reaches 1 (within the tolerance `SUM_TOLERANCE`) or when k = V. The teacher gets no gradient.

Student: soft-capped, tempered logits as in `divergences`; ``log p_S(tail)`` is the log-sum-exp of the
student's logits outside K (not ``log(1 - sum p_S)``), so a confident student whose top-k mass is
1 - 1e-9 keeps a finite, exact tail (``1 - sum`` would round to 0 and make forward KL infinite).
When k = V the tail is empty: ``-inf`` for both models, it contributes exactly 0, and the result equals
the full `token_divergence`.

`sampled_reverse_kl` needs ``tokens`` (the sampled ids y): y is mapped to its bucket (its slot in K,
or the tail), and the estimator is ``log p_S(b) - log p_T(b)`` at that bucket b with the policy-gradient
gradient of `divergences`. When y ~ p_S its bucket is distributed as the student's (k+1)-way
distribution, so this is the single-sample estimator of the (k+1)-way reverse KL.

The streaming, fused-with-unembedding form is `gkd_jax.kernels.fused_linear_topk_divergence`; both
forms share `student_kplus1`, `teacher_kplus1` and `kplus1_divergence`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gkd_jax.divergences import dense

NEG_INF = -jnp.inf
SUM_TOLERANCE = 1e-3  # exp(teacher_topk_logprobs) may sum to at most 1 + this (rounding of a cache)


def _concrete(x):
  """x as a numpy array, or None inside a trace (traced values are not range-checked)."""
  if isinstance(x, jax.core.Tracer):
    return None
  return np.asarray(x)


def validate_topk_args(vocab, lead_shape, teacher_topk_ids, teacher_topk_logprobs, tokens):
  """Raises ValueError (one line naming the argument) on bad top-k inputs or sampled tokens (the
  divergence's own arguments are `divergences.validate_divergence_args`'); returns k."""
  ids, lp = teacher_topk_ids, teacher_topk_logprobs
  lead_shape = tuple(lead_shape)
  if ids.ndim < 1 or tuple(ids.shape[:-1]) != lead_shape:
    raise ValueError(f"teacher_topk_ids.shape={tuple(ids.shape)} must be {lead_shape} + (k,)")
  if tuple(lp.shape) != tuple(ids.shape):
    raise ValueError(
        f"teacher_topk_logprobs.shape={tuple(lp.shape)} != "
        f"teacher_topk_ids.shape={tuple(ids.shape)}"
    )
  k = ids.shape[-1]
  if not 1 <= k <= vocab:
    raise ValueError(f"teacher_topk_ids.shape={tuple(ids.shape)}: k={k} must be in [1, V={vocab}]")
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"teacher_topk_ids.dtype={ids.dtype} must be an integer type")
  if not jnp.issubdtype(lp.dtype, jnp.floating):
    raise ValueError(f"teacher_topk_logprobs.dtype={lp.dtype} must be a floating type")
  if tokens is not None and tuple(jnp.shape(tokens)) != lead_shape:
    raise ValueError(f"tokens.shape={tuple(jnp.shape(tokens))} must be {lead_shape}")
  ids_np, lp_np = _concrete(ids), _concrete(lp)
  if ids_np is not None and ids_np.size:
    if ids_np.min() < 0 or ids_np.max() >= vocab:
      raise ValueError(
          f"teacher_topk_ids has ids in [{ids_np.min()}, {ids_np.max()}], outside "
          f"[0, V={vocab})"
      )
    srt = np.sort(ids_np.reshape(-1, k), axis=-1)
    if k > 1 and np.any(srt[:, 1:] == srt[:, :-1]):
      raise ValueError(
          "teacher_topk_ids has a repeated id at some position (top-k ids must be distinct)"
      )
  if lp_np is not None and lp_np.size:
    lp64 = lp_np.astype(np.float64)
    if np.isnan(lp64).any() or (lp64 > SUM_TOLERANCE).any():
      raise ValueError("teacher_topk_logprobs must be log-probabilities (<= 0, not NaN)")
    total = np.exp(lp64).sum(-1).max()
    if total > 1.0 + SUM_TOLERANCE:
      raise ValueError(
          f"teacher_topk_logprobs: exp sums to {total:.6g} > 1 at some position (they "
          f"must be log-probabilities of the full distribution)"
      )
  if tokens is not None:
    tok_np = _concrete(tokens)
    if tok_np is not None and tok_np.size and (tok_np.min() < 0 or tok_np.max() >= vocab):
      raise ValueError(f"tokens has ids outside [0, V={vocab})")
  return k


def log1mexp(x):
  """log(1 - exp(x)) for x <= 0, exact on both sides of -log 2; -inf for x >= 0 (sum reached 1)."""
  x = jnp.minimum(x, 0.0)
  near = x > -np.log(2.0)
  xn = jnp.where(near, x, -1.0)  # double-where: each branch only sees inputs where it is finite
  xf = jnp.where(near, -1.0, x)
  out = jnp.where(near, jnp.log(-jnp.expm1(xn)), jnp.log1p(-jnp.exp(xf)))
  return jnp.where(x < 0.0, out, NEG_INF)


def safe_lse(z, ok):
  """(shift, log l): log-sum-exp over the last axis of z's entries where ``ok`` = shift + log l.

  ``shift`` is the (gradient-free) max; ``log l`` is -inf (with zero gradient) when nothing is alive.
  """
  z = jnp.where(ok, z, NEG_INF)
  m = jax.lax.stop_gradient(jnp.max(z, axis=-1))
  shift = jnp.where(m == NEG_INF, 0.0, m)
  l = jnp.sum(jnp.where(ok, jnp.exp(z - shift[..., None]), 0.0), axis=-1)
  alive = l > 0
  return shift, jnp.where(alive, jnp.log(jnp.where(alive, l, 1.0)), NEG_INF)


def student_kplus1(zk, shift, log_l, shift_c, log_lc):
  """Student (k+1)-way log-probs [..., k+1] from its scaled logits at K, ``zk`` [..., k], and the
  log-sum-exps (shift + log l) of all its scaled logits and of those outside K (shifts gradient-free).
  Written as differences of shifted terms so logits of magnitude 1e4 keep their precision."""
  shift = jax.lax.stop_gradient(shift)
  shift_c = jax.lax.stop_gradient(shift_c)
  s_k = (zk - shift[..., None]) - log_l[..., None]
  s_tail = jnp.where(log_lc == NEG_INF, NEG_INF, (shift_c - shift) + (log_lc - log_l))
  return jnp.concatenate([s_k, s_tail[..., None]], axis=-1)


def teacher_kplus1(teacher_topk_logprobs, vocab):
  """Teacher (k+1)-way log-probs [..., k+1] (no gradient); the tail is -inf when k = V."""
  t_k = jax.lax.stop_gradient(teacher_topk_logprobs.astype(jnp.float32))
  k = t_k.shape[-1]
  if k == vocab:
    t_tail = jnp.full(t_k.shape[:-1], NEG_INF, jnp.float32)
  else:
    shift, log_l = safe_lse(t_k, jnp.ones(t_k.shape, bool))
    t_tail = log1mexp(shift + log_l)
  return jnp.concatenate([t_k, t_tail[..., None]], axis=-1)


def bucket_of(tokens, teacher_topk_ids):
  """The (k+1)-way bucket of each token: its slot in K, or k (the tail) when it is not in K."""
  k = teacher_topk_ids.shape[-1]
  hit = teacher_topk_ids == jnp.asarray(tokens)[..., None].astype(teacher_topk_ids.dtype)
  return jnp.where(hit.any(-1), jnp.argmax(hit, axis=-1), k).astype(jnp.int32)


def kplus1_divergence(s_k1, t_k1, *, kind, beta, alpha, bucket=None):
  """The kind of `divergences.token_divergence` applied to (k+1)-way log-probs -> float32 [...]."""
  # Already normalised log-probs: temperature 1 and no soft-cap make token_divergence's log-softmax
  # the identity (its normaliser is log 1 = 0, with zero gradient).
  return dense.token_divergence(
      s_k1,
      t_k1,
      kind=kind,
      beta=beta,
      alpha=alpha,
      temperature=1.0,
      tokens=bucket if kind == "sampled_reverse_kl" else None,
  )


def topk_divergence(
    student_logits,
    teacher_topk_ids,
    teacher_topk_logprobs,
    *,
    kind,
    beta=0.5,
    alpha=0.1,
    temperature=1.0,
    student_softcap=None,
    tokens=None,
):
  """Per-token divergence [...] float32 between the (k+1)-way distributions (module docstring).

  student_logits [..., V]; teacher_topk_ids [..., k] int (distinct per position); teacher_topk_logprobs
  [..., k] float, the teacher's log-probabilities at those ids under its full distribution at
  ``temperature``. ``tokens`` [...] int: the sampled ids, for kind="sampled_reverse_kl" only.
  Gradients reach ``student_logits`` only.
  """
  zs = jnp.asarray(student_logits)
  ids = jnp.asarray(teacher_topk_ids)
  lp = jnp.asarray(teacher_topk_logprobs)
  if zs.ndim < 1:
    raise ValueError(f"student_logits.shape={tuple(zs.shape)} must have a vocabulary axis")
  V = zs.shape[-1]
  spec = dense.DivergenceSpec(kind, beta, alpha, temperature, student_softcap)
  dense.validate_divergence_args(spec, tokens=tokens)
  validate_topk_args(V, zs.shape[:-1], ids, lp, tokens)
  z = dense.softcap_and_scale(zs, student_softcap, temperature)
  ids = ids.astype(jnp.int32)
  s_k1 = dense_student_kplus1(z, ids)
  t_k1 = teacher_kplus1(lp, V)
  bucket = None if tokens is None else bucket_of(tokens, ids)
  return kplus1_divergence(s_k1, t_k1, kind=kind, beta=beta, alpha=alpha, bucket=bucket)


def dense_student_kplus1(z, ids):
  """Student (k+1)-way log-probs [..., k+1] from its scaled logits z [..., V] and ids [..., k]."""
  zk = jnp.take_along_axis(z, ids, axis=-1)
  alive = z > NEG_INF
  shift, log_l = safe_lse(z, alive)
  shift_c, log_lc = safe_lse(z, alive & ~_membership(ids, z.shape[-1]))
  return student_kplus1(zk, shift, log_l, shift_c, log_lc)


def _membership(ids, vocab):
  """Boolean [..., V]: True at the ids of each position (a scatter; [..., V] is already live here)."""
  lead = ids.shape[:-1]
  flat = ids.reshape(-1, ids.shape[-1])
  rows = jnp.arange(flat.shape[0])[:, None]
  mask = jnp.zeros((flat.shape[0], vocab), bool).at[rows, flat].set(True)
  return mask.reshape(lead + (vocab,))
