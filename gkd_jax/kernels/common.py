"""Math shared by every streaming implementation: per-tile divergence terms and their closed-form gradient.

A streaming implementation visits the vocabulary in blocks. With ``s = log p_S`` and ``t = log p_T``
(known once the per-token normalisers are known, i.e. after a first pass), every kind is a sum over the
vocabulary of an elementwise term ``f(s_v, t_v)``. Its gradient w.r.t. the (scaled) student logits is

  dD/dz_v = g_v - p_S,v * G,   g_v = df/ds_v,   G = sum_u g_u,

because ``ds_u/dz_v = delta_uv - p_S,v``. ``G`` is accumulated in the value pass and saved (an [N] vector),
so the backward pass recomputes each logit tile once and needs no further reduction over the vocabulary.

Per kind (``M`` the mixture, ``m = log M``):

  forward_kl       f = p_T (t - s)                          g = -p_T
  reverse_kl       f = p_S (s - t)                          g = p_S (s - t + 1)
  jsd (0<b<1)      M = b p_T + (1-b) p_S
          f = b p_T (t - m) + (1-b) p_S (s - m)    g = (1-b) p_S (s - m)
  skew_forward_kl  M = a p_T + (1-a) p_S;  f = p_T (t - m)  g = -(1-a) p_T p_S / M
  skew_reverse_kl  M = (1-a) p_T + a p_S;  f = p_S (s - m)  g = p_S (s - m + 1) - a p_S^2 / M
  tvd              f = |p_T - p_S| / 2                      g = sign(p_S - p_T) p_S / 2
  sampled_reverse_kl  f = [v = y] (s - t)                   g = [v = y] (s - t)

sampled_reverse_kl's g is not df/ds: its gradient is the policy-gradient (REINFORCE) estimator
d * d/dz log p_S(y) with d = s_y - t_y held constant, i.e. dz = d (onehot(y) - p_S) (G = d), unbiased
for the gradient of KL(p_S || p_T) when y ~ p_S (divergences.py). A non-finite d gets g = 0.

Online normalisers: ``(m, l)`` with ``lse = m + log l``; log-probs are formed as ``(z - m) - log l`` so
logits of magnitude 1e4 keep their precision.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gkd_jax import divergences

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class Spec:
  """Static (hashable) description of the divergence, passed as a non-differentiable argument."""

  kind: str
  beta: float = 0.5
  alpha: float = 0.1
  temperature: float = 1.0
  student_softcap: float | None = None
  teacher_softcap: float | None = None

  @property
  def effective_kind(self) -> str:
    """jsd at beta=0 / beta=1 is exactly forward / reverse KL."""
    if self.kind == "jsd" and isinstance(self.beta, float) and self.beta in (0.0, 1.0):
      return "forward_kl" if self.beta == 0.0 else "reverse_kl"
    return self.kind

  def split(self):
    """(structure, values): a hashable Spec that keeps only the kind (ends resolved) and which
    soft-caps are on, and the float32[5] array (beta, alpha, temperature, student_softcap,
    teacher_softcap). Implementations that take the values as a runtime array compile once per
    structure, whatever the hyperparameters."""
    struct = Spec(self.effective_kind, -1.0, -1.0, -1.0,
                  None if self.student_softcap is None else -1.0,
                  None if self.teacher_softcap is None else -1.0)
    values = jnp.asarray([self.beta, self.alpha, self.temperature, self.student_softcap or 0.0,
                          self.teacher_softcap or 0.0], jnp.float32)
    return struct, values

  def bind(self, values):
    """Inverse of `split` (inside a trace): a Spec whose numbers are the entries of `values`."""
    return Spec(self.kind, values[0], values[1], values[2],
                None if self.student_softcap is None else values[3],
                None if self.teacher_softcap is None else values[4])


def make_spec(kind, beta=0.5, alpha=0.1, temperature=1.0, student_softcap=None, teacher_softcap=None,
              tokens=None,
       student_vocab=None, teacher_vocab=None) -> Spec:
  divergences.validate_divergence_args(
    kind, beta, alpha, temperature, student_softcap, teacher_softcap, tokens=tokens,
    student_vocab=student_vocab, teacher_vocab=teacher_vocab)
  for name, value in (("beta", beta), ("alpha", alpha), ("temperature", temperature)):
    if not divergences._is_concrete_number(value):
      raise ValueError(f"{name}={value!r} must be a Python number for the streaming kernels")
  cap = lambda c: None if c is None else float(c)  # noqa: E731
  return Spec(kind, float(beta), float(alpha), float(temperature), cap(student_softcap),
        cap(teacher_softcap))


def scale(z_raw, softcap, temperature):
  """float32 soft-cap then divide by temperature; -inf stays -inf."""
  return divergences.softcap_and_scale(z_raw, softcap, temperature)


def dscale(z_raw, softcap, temperature):
  """d scale(z) / dz (0 at -inf)."""
  z = z_raw.astype(jnp.float32)
  if softcap is None:
    return jnp.where(z == NEG_INF, 0.0, 1.0 / temperature)
  th = jnp.tanh(z / softcap)
  return (1.0 - th * th) / temperature


def stats_init(shape):
  return (jnp.full(shape, NEG_INF, jnp.float32), jnp.zeros(shape, jnp.float32))


def stats_update(m, l, z, ok):
  """Online log-sum-exp over the last axis of tile z [..., B] (entries with ok False ignored)."""
  z = jnp.where(ok, z, NEG_INF)
  m_new = jnp.maximum(m, jnp.max(z, axis=-1))
  m_safe = jnp.where(m_new == NEG_INF, 0.0, m_new)
  l_new = l * jnp.exp(m - m_safe) + jnp.sum(jnp.exp(z - m_safe[..., None]), axis=-1)
  return m_new, l_new


def stats_merge(m1, l1, m2, l2):
  m = jnp.maximum(m1, m2)
  m_safe = jnp.where(m == NEG_INF, 0.0, m)
  return m, l1 * jnp.exp(m1 - m_safe) + l2 * jnp.exp(m2 - m_safe)


def stats_finalize(m, l):
  """(shift, log l) so that log p = (z - shift) - log_l; an all -inf row gives log p = -inf."""
  shift = jnp.where(m == NEG_INF, 0.0, m)
  return shift, jnp.log(l)


def _log_mix(s, t, w_t):
  """log(w_t e^t + (1 - w_t) e^s), finite wherever s or t is finite (for 0 < w_t < 1)."""
  mx = jnp.maximum(s, t)
  mx = jnp.where(mx == NEG_INF, 0.0, mx)
  m = mx + jnp.log(w_t * jnp.exp(t - mx) + (1.0 - w_t) * jnp.exp(s - mx))
  return jnp.where(w_t == 0.0, s, jnp.where(w_t == 1.0, t, m))  # exact ends (skew alpha = 0 or 1)


def _plog(logp, other):
  """p (logp - other), 0 where p == 0."""
  alive = logp > NEG_INF
  return jnp.where(alive, jnp.exp(logp) * (jnp.where(alive, logp, 0.0) - jnp.where(alive, other, 0.0)), 0.0)


def tile_terms(spec: Spec, s, t, ok, onehot=None):
  """Elementwise (f, g) of the module docstring for log-prob tiles s, t; zero where ``ok`` is False.

  ``onehot`` (bool, same shape) marks the sampled token for sampled_reverse_kl.
  """
  kind = spec.effective_kind
  alive_s = s > NEG_INF
  p_s = jnp.exp(s)
  p_t = jnp.exp(t)
  if kind == "forward_kl":
    f = _plog(t, s)
    g = -p_t
  elif kind == "reverse_kl":
    f = _plog(s, t)
    g = jnp.where(alive_s, p_s * (jnp.where(alive_s, s - t, 0.0) + 1.0), 0.0)
  elif kind == "jsd":
    b = spec.beta
    m = _log_mix(s, t, b)
    f = b * _plog(t, m) + (1.0 - b) * _plog(s, m)
    g = (1.0 - b) * jnp.where(alive_s, p_s * jnp.where(alive_s, s - m, 0.0), 0.0)
  elif kind == "skew_forward_kl":
    a = spec.alpha
    m = _log_mix(s, t, a)
    f = _plog(t, m)
    both = alive_s & (t > NEG_INF)
    g = -(1.0 - a) * jnp.where(both, jnp.exp(jnp.where(both, t + s - m, 0.0)), 0.0)
  elif kind == "skew_reverse_kl":
    a = spec.alpha
    m = _log_mix(s, t, 1.0 - a)
    f = _plog(s, m)
    sm = jnp.where(alive_s, s - m, 0.0)
    g = jnp.where(alive_s, p_s * (sm + 1.0) - a * jnp.exp(jnp.where(alive_s, s + sm, 0.0)), 0.0)
  elif kind == "tvd":
    f = 0.5 * jnp.abs(p_t - p_s)
    g = jnp.where(p_s > p_t, 0.5 * p_s, jnp.where(p_s < p_t, -0.5 * p_s, 0.0))
  elif kind == "sampled_reverse_kl":
    f = jnp.where(onehot, s - t, 0.0)
    d = s - t
    g = jnp.where(onehot & (jnp.abs(d) < jnp.inf), d, 0.0)  # REINFORCE: dz = d (onehot - p_S)
  else:
    raise AssertionError(kind)
  return jnp.where(ok, f, 0.0), jnp.where(ok, g, 0.0)


def student_logit_grad(spec: Spec, s, g, G, ct, zs_raw, ok):
  """Cotangent of the raw student logits for a tile: ct * (g - p_S G) * dscale, zero where not ok.

  G and ct are per-token, shaped to broadcast against the tile (e.g. [N, 1]).
  """
  dz = (g - jnp.exp(s) * G) * ct
  dz = dz * dscale(zs_raw, spec.student_softcap, spec.temperature)
  return jnp.where(ok, dz, 0.0)


def dot(a, b, *, trans_a=False, trans_b=False):
  """float32-accumulated matmul at full precision (f32 inputs are not truncated to bf16 on TPU)."""
  if a.dtype != b.dtype:  # e.g. a float32 student next to a bf16 teacher: multiply in the wider type
    dtype = jnp.promote_types(a.dtype, b.dtype)
    a, b = a.astype(dtype), b.astype(dtype)
  ca = (0,) if trans_a else (a.ndim - 1,)
  cb = (b.ndim - 1,) if trans_b else (0,)
  prec = jax.lax.Precision.HIGHEST if jnp.float32 in (a.dtype, b.dtype) else None
  return jax.lax.dot_general(a, b, ((ca, cb), ((), ())), precision=prec,
               preferred_element_type=jnp.float32)
