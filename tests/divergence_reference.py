"""Independent float64 reference for the divergences: the textbook formulas of each kind.

Written naively (no stability tricks) and evaluated with jax in float64 (`jax.enable_x64`), so values
come straight from the definitions and gradients from float64 autodiff of them, except
`sampled_reverse_kl`: its gradient is the policy-gradient (REINFORCE) estimator d * grad log p_S(y),
with the value d = log p_S(y) - log p_T(y) held constant. Masked (-inf) vocabulary
columns are handled by dropping them (the reference never sees an -inf).
"""

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


def _scale(z, cap, tau):
  if cap is not None:
    z = cap * jnp.tanh(z / cap)
  return z / tau


def _kl(lp, lq):
  """KL from log-probabilities (finite everywhere: masked columns are dropped before)."""
  return jnp.sum(jnp.exp(lp) * (lp - lq), -1)


def _log_mix(lt, ls, w_t):
  """log(w_t p_T + (1 - w_t) p_S)."""
  if w_t == 0.0:
    return ls
  if w_t == 1.0:
    return lt
  return jnp.logaddexp(np.log(w_t) + lt, np.log1p(-w_t) + ls)


def ref_from_logits(zs, zt, kind, beta=0.5, alpha=0.1, tau=1.0, scap=None, tcap=None, tokens=None):
  """Textbook divergence, float64 jnp, logits [..., V] with no -inf entries."""
  ls = jax.nn.log_softmax(_scale(zs, scap, tau), -1)
  lt = jax.nn.log_softmax(_scale(zt, tcap, tau), -1)
  if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
    return _kl(lt, ls)
  if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
    return _kl(ls, lt)
  if kind == "jsd":
    m = _log_mix(lt, ls, beta)
    return beta * _kl(lt, m) + (1 - beta) * _kl(ls, m)
  if kind == "skew_forward_kl":
    return _kl(lt, _log_mix(lt, ls, alpha))
  if kind == "skew_reverse_kl":
    return _kl(ls, _log_mix(lt, ls, 1.0 - alpha))
  if kind == "tvd":
    return 0.5 * jnp.sum(jnp.abs(jnp.exp(lt) - jnp.exp(ls)), -1)
  if kind == "sampled_reverse_kl":
    idx = tokens[..., None]
    return (jnp.take_along_axis(ls, idx, -1) - jnp.take_along_axis(lt, idx, -1))[..., 0]
  raise ValueError(kind)


def _ref_student_logp_y(zs, tokens, tau=1.0, scap=None):
  """log p_S(y) at the sampled tokens, float64 jnp."""
  ls = jax.nn.log_softmax(_scale(zs, scap, tau), -1)
  return jnp.take_along_axis(ls, tokens[..., None], -1)[..., 0]


def _ref_vjp(f, logp_y, args, ct, kind):
  """(values, d sum(ct * values) / d args): autodiff of the definition, or for sampled_reverse_kl the
  REINFORCE estimator sum(ct * d * grad log p_S(y)) with d the (constant) value."""
  vals, vjp = jax.vjp(f, *args)
  if kind == "sampled_reverse_kl":
    _, vjp = jax.vjp(logp_y, *args)
    ct = ct * vals
  return vals, vjp(ct)


def ref_value_and_grad(zs, zt, ct, keep_cols=None, **kw):
  """(values [N], d sum(ct*values) / d zs [N, V]) in float64 numpy, for 2-D logits.

  keep_cols: boolean [V]; columns outside it are masked (-inf) in the inputs under test and are dropped
  here (their gradient is 0; tokens index the full vocabulary and are remapped).
  """
  zs = np.asarray(zs, np.float64)
  zt = np.asarray(zt, np.float64)
  ct = np.asarray(ct, np.float64)
  V = zs.shape[-1]
  keep = np.ones(V, bool) if keep_cols is None else np.asarray(keep_cols)
  tokens = kw.pop("tokens", None)
  if tokens is not None:
    remap = np.cumsum(keep) - 1
    tokens = jnp.asarray(remap[np.asarray(tokens)])
  with jax.enable_x64(True):
    f = lambda a: ref_from_logits(a, jnp.asarray(zt[:, keep]), tokens=tokens, **kw)  # noqa: E731
    logp_y = lambda a: _ref_student_logp_y(a, tokens, kw.get("tau", 1.0), kw.get("scap"))  # noqa: E731
    vals, (g,) = _ref_vjp(f, logp_y, (jnp.asarray(zs[:, keep]),), jnp.asarray(ct), kw["kind"])
    vals, g = np.asarray(vals), np.asarray(g)
  grad = np.zeros_like(zs)
  grad[:, keep] = g
  return vals, grad


def ref_fused_value_and_grad(hs, Ws, ht, Wt, ct, **kw):
  """(values, d/d hs, d/d Ws) float64 for logits hs @ Ws vs ht @ Wt."""
  with jax.enable_x64(True):
    hs, Ws, ht, Wt, ct = (jnp.asarray(np.asarray(x, np.float64)) for x in (hs, Ws, ht, Wt, ct))
    tokens = kw.pop("tokens", None)
    f = lambda a, b: ref_from_logits(a @ b, ht @ Wt, tokens=tokens, **kw)  # noqa: E731
    logp_y = lambda a, b: _ref_student_logp_y(a @ b, tokens, kw.get("tau", 1.0), kw.get("scap"))  # noqa: E731
    vals, (dh, dw) = _ref_vjp(f, logp_y, (hs, Ws), ct, kw["kind"])
    return np.asarray(vals), np.asarray(dh), np.asarray(dw)


def ref_student_probs(zs, tau=1.0, scap=None):
  """p_S = softmax(scale(zs)) in float64 numpy: the distribution the sampled tokens come from."""
  with jax.enable_x64(True):
    return np.asarray(
        jax.nn.softmax(_scale(jnp.asarray(np.asarray(zs, np.float64)), scap, tau), -1)
    )


def assert_close(actual, expected, rtol, what=""):
  """|a - e| <= rtol * max(|e| + max|e|, 1e-3): relative, floored by the scale of the array (and 1e-3)."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert np.all(np.isfinite(actual)), f"{what}: non-finite values {actual}"
  scale = np.max(np.abs(expected)) if expected.size else 0.0
  err = np.abs(actual - expected) / np.maximum(np.abs(expected) + scale, 1e-3)
  assert err.max() <= rtol, f"{what}: max relative error {err.max():.3g} > {rtol}"


def grid():
  """The issue's grid: every kind x beta (jsd) / alpha (skews) in {0, .1, .5, .9, 1}."""
  out = []
  for kind in KINDS:
    if kind == "jsd":
      out += [dict(kind=kind, beta=b) for b in (0.0, 0.1, 0.5, 0.9, 1.0)]
    elif kind.startswith("skew"):
      out += [dict(kind=kind, alpha=a) for a in (0.0, 0.1, 0.5, 0.9, 1.0)]
    else:
      out.append(dict(kind=kind))
  return out
