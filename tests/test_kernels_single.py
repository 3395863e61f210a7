"""Single-model streaming (cross-entropy, entropy) and the divergence kernels' entropies, against
dense float64 numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gkd_jax import kernels


def _dense_ref(h, w, softcap, temperature):
  z = h.astype(np.float64) @ w.astype(np.float64)
  if softcap is not None:
    z = softcap * np.tanh(z / softcap)
  z = z / temperature
  m = z.max(-1, keepdims=True)
  lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[:, 0]
  p = np.exp(z - lse[:, None])
  return z, lse, p


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("block", [7, 64])  # ragged last block and a single block
def test_cross_entropy_and_entropy_match_dense(softcap, block):
  rng = np.random.default_rng(0)
  n, d, v = 11, 16, 50
  h = rng.normal(size=(n, d)).astype(np.float32) * 2
  w = rng.normal(size=(d, v)).astype(np.float32)
  y = rng.integers(0, v, size=n)
  for temperature in (0.5, 2.0):
    z, lse, p = _dense_ref(h, w, softcap, temperature)
    ent_ref = -(p * np.log(p)).sum(-1)
    ent = kernels.entropy(
        jnp.asarray(h), jnp.asarray(w), softcap=softcap, temperature=temperature, vocab_block=block
    )
    np.testing.assert_allclose(ent, ent_ref, rtol=1e-5, atol=1e-5)
  z, lse, p = _dense_ref(h, w, softcap, 1.0)
  ce_ref = lse - z[np.arange(n), y]
  ce = kernels.cross_entropy(
      jnp.asarray(h), jnp.asarray(w), jnp.asarray(y), softcap=softcap, vocab_block=block
  )
  np.testing.assert_allclose(ce, ce_ref, rtol=1e-5, atol=1e-5)


def test_cross_entropy_gradient_matches_dense_formula():
  rng = np.random.default_rng(1)
  n, d, v = 6, 8, 37
  h = rng.normal(size=(n, d)).astype(np.float32)
  w = rng.normal(size=(d, v)).astype(np.float32)
  y = rng.integers(0, v, size=n)
  gh, gw = jax.grad(
      lambda h, w: kernels.cross_entropy(h, w, jnp.asarray(y), vocab_block=8).sum(), argnums=(0, 1)
  )(jnp.asarray(h), jnp.asarray(w))
  _, _, p = _dense_ref(h, w, None, 1.0)
  dz = p.copy()
  dz[np.arange(n), y] -= 1.0  # d(lse - z_y)/dz
  np.testing.assert_allclose(gh, dz @ w.T.astype(np.float64), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gw, h.T.astype(np.float64) @ dz, rtol=1e-5, atol=1e-5)


def test_masked_vocabulary_columns_with_huge_logits_stay_finite():
  rng = np.random.default_rng(2)
  h = rng.normal(size=(4, 8)).astype(np.float32) * 1e3
  w = rng.normal(size=(8, 20)).astype(np.float32)
  ent = kernels.entropy(jnp.asarray(h), jnp.asarray(w), vocab_block=6)
  _, _, p = _dense_ref(h, w, None, 1.0)
  ref = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(-1)
  assert np.all(np.isfinite(ent))
  np.testing.assert_allclose(ent, ref, atol=1e-3)


@pytest.mark.parametrize("impl", ["reference", "chunked", "pallas"])
def test_divergence_kernels_return_entropies_and_token_logprob(impl):
  """The entropies and the student's log p(token) that the divergence's value pass accumulates equal
  dense float64 ones of the compared distributions (soft-capped, at the divergence's temperature),
  ragged vocabulary."""
  rng = np.random.default_rng(3)
  n, ds, dt, v = 10, 8, 12, 45
  hs, ht = rng.normal(size=(n, ds)) * 2, rng.normal(size=(n, dt)) * 2
  ws, wt = rng.normal(size=(ds, v)), rng.normal(size=(dt, v))
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  y = rng.integers(0, v, size=n)
  _, stats = kernels.fused_linear_divergence(
      f32(hs),
      f32(ws),
      f32(ht),
      f32(wt),
      kind="jsd",
      beta=0.3,
      temperature=1.7,
      student_softcap=3.0,
      teacher_softcap=2.0,
      tokens=jnp.asarray(y),
      impl=impl,
      vocab_block=16,
      token_block=8,
      return_stats=True,
  )
  for got, h, w, cap in (
      (stats.student_entropy, hs, ws, 3.0),
      (stats.teacher_entropy, ht, wt, 2.0),
  ):
    _, _, p = _dense_ref(h, w, cap, 1.7)
    np.testing.assert_allclose(got, -(p * np.log(p)).sum(-1), rtol=1e-5, atol=1e-5)
  z, lse, _ = _dense_ref(hs, ws, 3.0, 1.7)
  np.testing.assert_allclose(stats.student_logprob, z[np.arange(n), y] - lse, rtol=1e-5, atol=1e-5)
