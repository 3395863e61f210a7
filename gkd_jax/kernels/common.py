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
for the gradient of KL(p_S || p_T) when y ~ p_S (divergences/dense.py). A non-finite d gets g = 0.

Online normalisers: ``(m, l)`` with ``lse = m + log l``; log-probs are formed as ``(z - m) - log l`` so
logits of magnitude 1e4 keep their precision. The same statistics, merged over a mesh axis
(`stats_allreduce`), serve the vocab-parallel pass, and the value pass also sums ``-p log p`` of both
models and picks the student's log-prob of the sampled token (`stat_terms`), so those metrics cost
no extra pass over the vocabulary.

This module is the one streaming engine: every implementation (chunked XLA, Pallas TPU and GPU,
vocab-parallel, the single-model cross-entropy/entropy of `single.py`) uses these helpers.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

import jax
import jax.numpy as jnp

from gkd_jax import divergences
from gkd_jax.divergences import DivergenceSpec, dense

NEG_INF = -jnp.inf

# A hyperparameter: a Python number, or a traced scalar once a `Structure` binds runtime values.
Scalar = Union[float, jax.Array]


@dataclasses.dataclass(frozen=True)
class Structure:
  """The static part of a `DivergenceSpec`: the kind (jsd's ends resolved) and which soft-caps are
  on. Implementations that take the numbers as a runtime array (`split`) compile once per
  structure, whatever the hyperparameters."""

  kind: str
  student_capped: bool
  teacher_capped: bool

  def bind(self, values: jax.Array) -> DivergenceSpec:
    """Inverse of `split` (inside a trace): a spec whose numbers are the entries of `values`."""
    return DivergenceSpec(
        self.kind,
        values[0],
        values[1],
        values[2],
        values[3] if self.student_capped else None,
        values[4] if self.teacher_capped else None,
    )


def split(spec: DivergenceSpec) -> tuple[Structure, jax.Array]:
  """(Structure, float32[5] array of beta, alpha, temperature, student_softcap, teacher_softcap)."""
  struct = Structure(
      spec.effective_kind, spec.student_softcap is not None, spec.teacher_softcap is not None
  )
  values = jnp.asarray(
      [
          spec.beta,
          spec.alpha,
          spec.temperature,
          spec.student_softcap or 0.0,
          spec.teacher_softcap or 0.0,
      ],
      jnp.float32,
  )
  return struct, values


def require_numbers(spec: DivergenceSpec) -> DivergenceSpec:
  """The streaming kernels compile the hyperparameters in: they must be Python numbers."""
  for name in ("beta", "alpha", "temperature"):
    if not dense._is_concrete_number(getattr(spec, name)):  # pylint: disable=protected-access
      raise ValueError(
          f"{name}={getattr(spec, name)!r} must be a Python number for the streaming " "kernels"
      )
  return spec


def scale(z_raw: jax.Array, softcap: Optional[Scalar], temperature: Scalar) -> jax.Array:
  """float32 soft-cap then divide by temperature; -inf stays -inf."""
  return divergences.softcap_and_scale(z_raw, softcap, temperature)


def dscale(z_raw: jax.Array, softcap: Optional[Scalar], temperature: Scalar) -> jax.Array:
  """d scale(z) / dz (0 at -inf)."""
  z = z_raw.astype(jnp.float32)
  if softcap is None:
    return jnp.where(z == NEG_INF, 0.0, 1.0 / temperature)
  th = jnp.tanh(z / softcap)
  return (1.0 - th * th) / temperature


def stats_init(shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """Empty online log-sum-exp statistics (running max m, running sum l of e^(z - m))."""
  return (jnp.full(shape, NEG_INF, jnp.float32), jnp.zeros(shape, jnp.float32))


def stats_update(
    m: jax.Array, l: jax.Array, z: jax.Array, ok: Union[jax.Array, bool] = True
) -> tuple[jax.Array, jax.Array]:
  """Online log-sum-exp over the last axis of tile z [..., B] (entries with ok False ignored).

  m, l are z.shape[:-1], or z.shape[:-1] + (1,) (the [N, 1] vectors of the Pallas kernels)."""
  keep = m.ndim == z.ndim
  z = jnp.where(ok, z, NEG_INF)
  m_new = jnp.maximum(m, jnp.max(z, axis=-1, keepdims=keep))
  m_safe = jnp.where(m_new == NEG_INF, 0.0, m_new)
  e = jnp.exp(z - (m_safe if keep else m_safe[..., None]))
  return m_new, l * jnp.exp(m - m_safe) + jnp.sum(e, axis=-1, keepdims=keep)


def stats_allreduce(m: jax.Array, l: jax.Array, axis_name: str) -> tuple[jax.Array, jax.Array]:
  """Merge per-shard statistics over a mesh axis (inside shard_map): only [N] vectors move."""
  m_all = jax.lax.pmax(m, axis_name)
  m_safe = jnp.where(m_all == NEG_INF, 0.0, m_all)
  return m_all, jax.lax.psum(l * jnp.exp(m - m_safe), axis_name)


def stats_finalize(m: jax.Array, l: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(shift, log l) so that log p = (z - shift) - log_l; an all -inf row gives log p = -inf."""
  shift = jnp.where(m == NEG_INF, 0.0, m)
  return shift, jnp.log(l)


def log_probs(z: jax.Array, shift: jax.Array, log_l: jax.Array) -> jax.Array:
  """Log-probabilities of a tile from finalized statistics (per-token, broadcast over columns)."""
  return (z - shift) - log_l


def round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def pad_to(x: jax.Array, axis: int, size: int, value: float = 0) -> jax.Array:
  """x zero- (or `value`-) padded along `axis` up to `size` (no copy when it already is)."""
  if x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _log_mix(s, t, w_t):
  """log(w_t e^t + (1 - w_t) e^s), finite wherever s or t is finite (for 0 < w_t < 1)."""
  mx = jnp.maximum(s, t)
  mx = jnp.where(mx == NEG_INF, 0.0, mx)
  m = mx + jnp.log(w_t * jnp.exp(t - mx) + (1.0 - w_t) * jnp.exp(s - mx))
  return jnp.where(w_t == 0.0, s, jnp.where(w_t == 1.0, t, m))  # exact ends (skew alpha = 0 or 1)


def _plog(logp, other):
  """p (logp - other), 0 where p == 0."""
  alive = logp > NEG_INF
  return jnp.where(
      alive, jnp.exp(logp) * (jnp.where(alive, logp, 0.0) - jnp.where(alive, other, 0.0)), 0.0
  )


def tile_terms(
    spec: DivergenceSpec,
    s: jax.Array,
    t: jax.Array,
    ok: jax.Array,
    onehot: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
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


def stat_terms(
    s: jax.Array, t: jax.Array, ok: jax.Array, onehot: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Elementwise (-p_S s, -p_T t, [v = y] s) of log-prob tiles: summed over the vocabulary in the
  value pass they give both models' entropies (of the distributions the divergence compares) and
  the student's log-probability of the token y, for free (`TokenStats`)."""

  def h(logp):
    alive = ok & (logp > NEG_INF)
    return jnp.where(alive, -jnp.exp(logp) * jnp.where(alive, logp, 0.0), 0.0)

  return h(s), h(t), jnp.where(ok & onehot, s, 0.0)


def student_logit_grad(
    spec: DivergenceSpec,
    s: jax.Array,
    g: jax.Array,
    G: jax.Array,
    ct: jax.Array,
    zs_raw: jax.Array,
    ok: jax.Array,
) -> jax.Array:
  """Cotangent of the raw student logits for a tile: ct * (g - p_S G) * dscale, zero where not ok.

  G and ct are per-token, shaped to broadcast against the tile (e.g. [N, 1]).
  """
  dz = (g - jnp.exp(s) * G) * ct
  dz = dz * dscale(zs_raw, spec.student_softcap, spec.temperature)
  return jnp.where(ok, dz, 0.0)


def dot(a: jax.Array, b: jax.Array, *, trans_a: bool = False, trans_b: bool = False) -> jax.Array:
  """float32-accumulated matmul at full precision (f32 inputs are not truncated to bf16 on TPU)."""
  if (
      a.dtype != b.dtype
  ):  # e.g. a float32 student next to a bf16 teacher: multiply in the wider type
    dtype = jnp.promote_types(a.dtype, b.dtype)
    a, b = a.astype(dtype), b.astype(dtype)
  ca = (0,) if trans_a else (a.ndim - 1,)
  cb = (b.ndim - 1,) if trans_b else (0,)
  prec = jax.lax.Precision.HIGHEST if jnp.float32 in (a.dtype, b.dtype) else None
  return jax.lax.dot_general(
      a, b, ((ca, cb), ((), ())), precision=prec, preferred_element_type=jnp.float32
  )
