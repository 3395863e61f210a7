"""models.matmul.dense (the model's weight matmuls, with a backward written for XLA:CPU) and the
sampler's argmax / categorical (two plain reductions instead of argmax's (value, index) one):
values against float64 numpy and against the JAX functions they replace, on fresh random inputs,
and which backward each platform lowers."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from gkd_jax.models import matmul
from gkd_jax.sampling import argmax, categorical


@pytest.mark.parametrize("shape", [(8, 96, 256, 1024), (1, 7, 24, 40)])
def test_dense_values_and_gradients_equal_float64_and_autodiff(shape):
  B, T, D, F = shape
  rng = np.random.default_rng(sum(shape))
  x = rng.standard_normal((B, T, D)).astype(np.float32)
  w = (rng.standard_normal((D, F)) / np.sqrt(D)).astype(np.float32)
  r = rng.standard_normal((B, T, F)).astype(np.float32)  # a random cotangent
  loss = lambda f: lambda x, w: jnp.sum(f(x, w) * r)
  got = jax.jit(jax.value_and_grad(loss(matmul.dense), argnums=(0, 1)))(x, w)
  plain = jax.jit(jax.value_and_grad(loss(jnp.matmul), argnums=(0, 1)))(x, w)
  # float64: y = x w, dL/dx = r wᵀ, dL/dw = Σ_tokens xᵀ r
  x64, w64, r64 = (a.astype(np.float64) for a in (x, w, r))
  want = (
      np.sum((x64 @ w64) * r64),
      (r64 @ w64.T),
      np.einsum("btd,btf->df", x64, r64),
  )
  for g, p, ref in zip((got[0], *got[1]), (plain[0], *plain[1]), want):
    np.testing.assert_allclose(np.asarray(g), ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())
    np.testing.assert_array_equal(np.asarray(g), np.asarray(p))  # bitwise autodiff's on CPU


def _backward_ops(f, platform: str) -> list[str]:
  """The dot_general / transpose ops of grad(sum(f(x, w) * r)) lowered for `platform` (export:
  lowering only, no such device needed), SSA names dropped."""
  x, w, r = jnp.ones((3, 5, 6)), jnp.ones((6, 4)), jnp.ones((3, 5, 4))
  grad = jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w) * r), argnums=(0, 1)))
  text = export.export(grad, platforms=[platform])(x, w).mlir_module()
  ops = re.findall(r"(stablehlo\.(?:dot_general|transpose)[^\n]*?)(?: loc\(|$)", text, re.M)
  return [re.sub(r"%[\w#]+", "%", op) for op in ops]


def test_dense_lowers_autodiffs_backward_for_tpu_and_its_own_for_cpu():
  assert _backward_ops(matmul.dense, "tpu") == _backward_ops(jnp.matmul, "tpu")
  assert _backward_ops(matmul.dense, "cpu") != _backward_ops(jnp.matmul, "cpu")


def test_argmax_equals_jnp_argmax_with_ties_infinities_and_nans():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((64, 301)).astype(np.float32)
  x[1, [4, 200]] = 9.0  # a tie: the first one wins
  x[2] = -np.inf  # nothing finite: index 0
  x[3, 10:] = -np.inf
  x[4, [7, 50]] = np.nan  # the first NaN wins, as in jnp.argmax
  x[5, 0] = np.inf
  x[6] = np.round(x[6])  # many ties
  want = np.asarray(jnp.argmax(jnp.asarray(x), axis=-1))
  assert want[1] == 4 and want[4] == 7  # the cases above are what they claim to be
  got = np.asarray(jax.jit(argmax)(x))
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("vocab", [5, 4096])
def test_categorical_draws_the_same_tokens_as_jax_random_categorical(vocab):
  rng = np.random.default_rng(vocab)
  logits = (3 * rng.standard_normal((16, vocab))).astype(np.float32)
  logits[:, : vocab // 3] = -np.inf  # masked entries, as top-k / top-p leave them
  mine = jax.jit(jax.vmap(categorical, in_axes=(0, None)))
  theirs = jax.jit(jax.vmap(lambda k, l: jax.random.categorical(k, l, axis=-1), in_axes=(0, None)))
  keys = jax.random.split(jax.random.key(vocab), 200)
  got, want = np.asarray(mine(keys, logits)), np.asarray(theirs(keys, logits))
  np.testing.assert_array_equal(got, want)
  assert (got >= vocab // 3).all() and len(np.unique(got)) > min(vocab // 2, 20)
