"""Our `jsd` against TRL's GKDTrainer.generalized_jsd_loss (tests/fixtures/make_trl_fixtures.py).

TRL special-cases beta=0 (KL(p_T||p_S)) and beta=1 (KL(p_S||p_T)): the same ends as ours, so the whole
beta grid, ends included, must agree; and its "batchmean" over labels != -100 is our masked_mean.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from divergence_reference import assert_close
from gkd_jax import divergences, kernels

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "trl", "generalized_jsd.npz")


def test_jsd_matches_trl_generalized_jsd_loss():
  fx = np.load(FIXTURE)
  zs, zt, ct = (
      jnp.asarray(fx["student"]),
      jnp.asarray(fx["teacher"]),
      jnp.asarray(fx["ct"], jnp.float32),
  )
  mask = jnp.asarray(fx["labels"] != -100)
  k = 0
  for beta in fx["betas"]:
    for tau in fx["taus"]:

      def f(a):
        d = divergences.token_divergence(
            a, zt, kind="jsd", beta=float(beta), temperature=float(tau)
        )
        return jnp.sum(d * ct), d

      (_, d), g = jax.value_and_grad(f, has_aux=True)(zs)
      where = f"beta={beta} tau={tau}"
      assert_close(d, fx["per_token"][k], 1e-5, "per-token " + where)
      assert_close(g, fx["grads"][k], 1e-5, "grad " + where)
      assert_close(divergences.masked_mean(d, mask), fx["batchmean"][k], 1e-5, "batchmean " + where)
      k += 1


def test_streaming_jsd_matches_trl():
  fx = np.load(FIXTURE)
  k = 1 * len(fx["taus"]) + 2  # beta=0.1, tau=2
  d = kernels.vocab_divergence(
      jnp.asarray(fx["student"]),
      jnp.asarray(fx["teacher"]),
      kind="jsd",
      beta=float(fx["betas"][1]),
      temperature=float(fx["taus"][2]),
      impl="chunked",
      vocab_block=4,
  )
  assert_close(d, fx["per_token"][k], 1e-5, "chunked per-token")
