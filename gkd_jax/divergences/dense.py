"""Dense token-level divergences: the specification of every kind, in code.

Per token, on logits soft-capped (``c * tanh(z / c)``, optional) and then divided by the temperature
``tau``: ``p_T = softmax(z_T / tau)``, ``p_S = softmax(z_S / tau)``.

| kind                 | value                                                                  |
| -------------------- | ---------------------------------------------------------------------- |
| `forward_kl`         | KL(p_T || p_S)                                                         |
| `reverse_kl`         | KL(p_S || p_T)                                                         |
| `jsd` (beta)         | M = beta p_T + (1 - beta) p_S; beta KL(p_T||M) + (1 - beta) KL(p_S||M); |
|                      | beta = 0 is exactly forward_kl, beta = 1 exactly reverse_kl            |
| `skew_forward_kl`    | KL(p_T || alpha p_T + (1 - alpha) p_S)                                 |
| `skew_reverse_kl`    | KL(p_S || (1 - alpha) p_T + alpha p_S)                                 |
| `tvd`                | 1/2 sum |p_T - p_S|                                                    |
| `sampled_reverse_kl` | log p_S(y) - log p_T(y) at the sampled token y (``tokens``)            |

`sampled_reverse_kl` is a single-sample estimator of reverse KL when y ~ p_S: its value
d = log p_S(y) - log p_T(y) is unbiased for KL(p_S || p_T). Its gradient w.r.t. the student logits is
the policy-gradient (REINFORCE / score-function) estimator with d held constant,
stop_gradient(d) * d/dz_S log p_S(y) = d * (onehot(y) - p_S), whose expectation over y ~ p_S is
the gradient of KL(p_S || p_T). (The pathwise gradient of the expression, onehot(y) - p_S, has
expectation zero and never sees the teacher.) Where d is not finite (a token the teacher rules out)
the value is that d and the student gradient is 0, so one such token cannot turn every gradient NaN.
The teacher logits keep the pathwise gradient -d/dz_T log p_T(y), also unbiased for the gradient of
KL(p_S || p_T) w.r.t. them (the streaming kernels give the teacher no gradient at all).

Everything is computed in float32 whatever the input dtype. Masked vocabulary entries are ``-inf`` logits;
they stay ``-inf`` under soft-capping, contribute exactly 0 and get 0 gradient. Log-probabilities are
formed as ``(z - max) - log(sum(exp(z - max)))`` so logits of magnitude 1e4 keep full relative precision.
The formulas are written so that reverse-mode autodiff through them is NaN-free for ``-inf`` entries;
the streaming kernels in `gkd_jax.kernels` use closed-form gradients and are tested against these.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

KINDS = (
    "forward_kl",
    "reverse_kl",
    "jsd",
    "skew_forward_kl",
    "skew_reverse_kl",
    "tvd",
    "sampled_reverse_kl",
)


def _is_concrete_number(x) -> bool:
  return isinstance(x, (numbers.Number, np.generic)) or (isinstance(x, np.ndarray) and x.ndim == 0)


def validate_divergence_args(
    spec, *, tokens=None, student_vocab=None, teacher_vocab=None, check_tokens=True
):
  """Raises ValueError naming the offending field of `spec` (a `DivergenceSpec`) or argument and its
  value. Traced values are not range-checked.

  ``check_tokens``: whether a missing ``tokens`` is an error for kind="sampled_reverse_kl" (False
  when only the hyperparameters are being checked, as `DivergenceSpec` does)."""
  kind, beta, alpha, temperature = spec.kind, spec.beta, spec.alpha, spec.temperature
  student_softcap, teacher_softcap = spec.student_softcap, spec.teacher_softcap
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r} is not one of {KINDS}")
  for name, value in (("beta", beta), ("alpha", alpha)):
    if _is_concrete_number(value):
      v = float(value)
      if not (0.0 <= v <= 1.0):  # also rejects NaN
        raise ValueError(f"{name}={value!r} must be in [0, 1]")
  if _is_concrete_number(temperature):
    t = float(temperature)
    if not (t > 0.0) or not np.isfinite(t):
      raise ValueError(f"temperature={temperature!r} must be a finite number > 0")
  for name, cap in (("student_softcap", student_softcap), ("teacher_softcap", teacher_softcap)):
    if cap is not None and _is_concrete_number(cap):
      c = float(cap)
      if not (c > 0.0) or not np.isfinite(c):
        raise ValueError(f"{name}={cap!r} must be None or a finite number > 0")
  if student_vocab is not None and teacher_vocab is not None and student_vocab != teacher_vocab:
    raise ValueError(
        f"student vocabulary size ({student_vocab}) != teacher vocabulary size ({teacher_vocab}): "
        f"student_vocab={student_vocab}, teacher_vocab={teacher_vocab}"
    )
  if check_tokens and kind == "sampled_reverse_kl" and tokens is None:
    raise ValueError("tokens=None: kind='sampled_reverse_kl' needs the sampled token ids")


@dataclasses.dataclass(frozen=True)
class DivergenceSpec:
  """One divergence and its hyperparameters: the one place they are declared.

  Built from `config.gkd` by the trainer, validated on construction (concrete numbers only; a spec
  rebuilt inside a trace from runtime values is not re-checked) and passed whole to every kernel.
  The soft-caps belong to the models (Gemma 2's final-logit soft-capping) and are filled in by the
  caller that knows them.
  """

  kind: str
  beta: float = 0.5
  alpha: float = 0.1
  temperature: float = 1.0
  student_softcap: Optional[float] = None
  teacher_softcap: Optional[float] = None

  def __post_init__(self):
    validate_divergence_args(self, check_tokens=False)

  @property
  def effective_kind(self) -> str:
    """jsd at beta=0 / beta=1 is exactly forward / reverse KL."""
    if self.kind == "jsd" and _is_concrete_number(self.beta) and float(self.beta) in (0.0, 1.0):
      return "forward_kl" if float(self.beta) == 0.0 else "reverse_kl"
    return self.kind


def softcap_and_scale(logits, softcap, temperature):
  """float32 ``c * tanh(z / c) / tau``; ``-inf`` (masked) entries stay ``-inf``."""
  z = logits.astype(jnp.float32)
  if softcap is not None:
    capped = softcap * jnp.tanh(z / softcap)
    z = jnp.where(z == -jnp.inf, -jnp.inf, capped)
  return z / temperature


def log_softmax(z):
  """Stable log-softmax over the last axis; rows that are entirely -inf give -inf (not NaN)."""
  m = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  shifted = z - m
  return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def _kl_terms(logp, logq):
  """Elementwise p * (log p - log q), 0 where p == 0; inf where p > 0 and q == 0 (the true value)."""
  alive = logp > -jnp.inf
  logp0 = jnp.where(alive, logp, 0.0)
  logq0 = jnp.where(alive, logq, 0.0)
  return jnp.where(alive, jnp.exp(logp0) * (logp0 - logq0), 0.0)


def _log_mixture(s, t, w_t):
  """log(w_t * p_T + (1 - w_t) * p_S) elementwise, from log-probs s (student) and t (teacher)."""
  alive = (s > -jnp.inf) | (t > -jnp.inf)
  s0 = jnp.where(alive, s, 0.0)
  t0 = jnp.where(alive, t, 0.0)
  mx = jax.lax.stop_gradient(jnp.maximum(s0, t0))
  mix = w_t * jnp.exp(t0 - mx) + (1.0 - w_t) * jnp.exp(s0 - mx)
  m = jnp.where(alive, mx + jnp.log(mix), -jnp.inf)
  if _is_concrete_number(w_t) and float(w_t) in (0.0, 1.0):  # exact ends (skew alpha = 0 or 1)
    return s if float(w_t) == 0.0 else t
  return m


def _jsd_interior(s, t, beta):
  m = _log_mixture(s, t, beta)
  return beta * _kl_terms(t, m).sum(-1) + (1.0 - beta) * _kl_terms(s, m).sum(-1)


def as_spec(
    spec, hyperparameters, *, tokens=None, student_vocab=None, teacher_vocab=None
) -> DivergenceSpec:
  """The one `DivergenceSpec` of a call that takes a spec or its fields by keyword (not both),
  checked against the call's inputs (sampled tokens, vocabulary sizes)."""
  if spec is None:
    spec = DivergenceSpec(**hyperparameters)
  elif hyperparameters:
    raise ValueError(f"pass either spec or its fields, not both ({sorted(hyperparameters)})")
  validate_divergence_args(
      spec,
      tokens=tokens,
      student_vocab=student_vocab,
      teacher_vocab=teacher_vocab,
  )
  return spec


def token_divergence(
    student_logits,
    teacher_logits,
    spec: Optional[DivergenceSpec] = None,
    *,
    tokens=None,
    **hyperparameters,
):
  """Per-token divergence D(p_T, p_S) for logits [..., V] -> float32 [...].

  ``spec`` or its fields by keyword (``kind``, ``beta``, ``alpha``, ``temperature``,
  ``student_softcap``, ``teacher_softcap``; `DivergenceSpec`), which may be traced values here.
  ``tokens`` [...] int: the sampled ids, for kind="sampled_reverse_kl".
  """
  spec = as_spec(
      spec,
      hyperparameters,
      tokens=tokens,
      student_vocab=student_logits.shape[-1],
      teacher_vocab=teacher_logits.shape[-1],
  )
  kind, beta, alpha, temperature = spec.kind, spec.beta, spec.alpha, spec.temperature
  student_softcap, teacher_softcap = spec.student_softcap, spec.teacher_softcap
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(
        f"student_logits.shape={student_logits.shape} != teacher_logits.shape={teacher_logits.shape}"
    )
  s = log_softmax(softcap_and_scale(student_logits, student_softcap, temperature))
  t = log_softmax(softcap_and_scale(teacher_logits, teacher_softcap, temperature))

  if kind == "forward_kl":
    return _kl_terms(t, s).sum(-1)
  if kind == "reverse_kl":
    return _kl_terms(s, t).sum(-1)
  if kind == "jsd":
    if _is_concrete_number(beta):
      b = float(beta)
      if b == 0.0:
        return _kl_terms(t, s).sum(-1)
      if b == 1.0:
        return _kl_terms(s, t).sum(-1)
      return _jsd_interior(s, t, b)
    b = jnp.clip(jnp.asarray(beta, jnp.float32), 1e-6, 1 - 1e-6)  # traced beta: select the ends
    return jnp.where(
        beta == 0.0,
        _kl_terms(t, s).sum(-1),
        jnp.where(beta == 1.0, _kl_terms(s, t).sum(-1), _jsd_interior(s, t, b)),
    )
  if kind == "skew_forward_kl":
    return _kl_terms(t, _log_mixture(s, t, alpha)).sum(-1)
  if kind == "skew_reverse_kl":
    return _kl_terms(s, _log_mixture(s, t, 1.0 - alpha)).sum(-1)
  if kind == "tvd":
    return 0.5 * jnp.abs(jnp.exp(t) - jnp.exp(s)).sum(-1)
  if kind == "sampled_reverse_kl":
    tokens = jnp.asarray(tokens)
    if tokens.shape != s.shape[:-1]:
      raise ValueError(
          f"tokens.shape={tokens.shape} must equal the logits' leading shape {s.shape[:-1]}"
      )
    idx = tokens[..., None].astype(jnp.int32)
    s_y = jnp.take_along_axis(s, idx, -1)[..., 0]
    t_y = jnp.take_along_axis(t, idx, -1)[..., 0]
    d = s_y - t_y
    # Value d; student gradient stop_gradient(d) * grad s_y (REINFORCE), teacher gradient -grad t_y.
    ok = jnp.isfinite(d)
    coef = jax.lax.stop_gradient(jnp.where(ok, d, 0.0))
    s_y0 = jnp.where(ok, s_y, 0.0)
    surrogate = coef * (s_y0 - jax.lax.stop_gradient(s_y0))  # 0 in value
    return jax.lax.stop_gradient(s_y) - t_y + surrogate
  raise AssertionError(kind)


def masked_mean(values, mask):
  """Mean of ``values`` over entries where ``mask`` is nonzero (float32); 0 when nothing is valid."""
  values = values.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  total = jnp.sum(jnp.where(mask > 0, values, 0.0) * mask)
  count = jnp.sum(mask)
  return total / jnp.maximum(count, 1.0)
