"""Vocab-parallel divergence on 8 fake CPU devices equals the single-device result (and the reference)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from divergence_reference import assert_close, ref_fused_value_and_grad
from gkd_jax import kernels
from gkd_jax.kernels import Layout
from test_kernels_chunked import fused_inputs

V = 64  # 8 shards of 8 columns; vocab_block=3 makes every shard's last block ragged


def _mesh(shape):
  names = ("tensor",) if len(shape) == 1 else ("data", "tensor")
  return Mesh(np.array(jax.devices()[:8]).reshape(shape), names)


def _run(mesh, kw, hs, ws, ht, wt, ct, tok):
  def f(a, b):
    d = kernels.fused_linear_divergence(
        a, b, jnp.asarray(ht), wt_s, tokens=jnp.asarray(tok), **kw, **extra
    )
    return jnp.sum(d * ct), d

  extra = {} if mesh is None else dict(layout=Layout(mesh, "tensor"), vocab_block=3)
  col = None if mesh is None else NamedSharding(mesh, P(None, "tensor"))
  put = (lambda x: jnp.asarray(x)) if mesh is None else (lambda x: jax.device_put(x, col))  # noqa: E731
  wt_s = put(wt)
  fn = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))
  (_, d), (dh, dw) = fn(jnp.asarray(hs), put(ws))
  return fn, (jnp.asarray(hs), put(ws)), np.asarray(d), np.asarray(dh), np.asarray(dw), dw.sharding


@pytest.mark.parametrize("shape", [(8,), (2, 4), (4, 2)], ids=str)
@pytest.mark.parametrize("kind", ["jsd", "sampled_reverse_kl"])
def test_vocab_parallel_matches_single_device(shape, kind):
  hs, ws, ht, wt, ct, tok = fused_inputs(3, v=V)
  kw = dict(
      kind=kind, beta=0.3, temperature=0.5, student_softcap=3.0, teacher_softcap=5.0, impl="chunked"
  )
  mesh = _mesh(shape)
  fn, args, d, dh, dw, sharding = _run(mesh, kw, hs, ws, ht, wt, ct, tok)
  _, _, d1, dh1, dw1, _ = _run(None, kw, hs, ws, ht, wt, ct, tok)
  np.testing.assert_allclose(d, d1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dh, dh1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dw, dw1, rtol=1e-5, atol=1e-6)
  assert sharding.spec == P(None, "tensor")  # the unembedding gradient stays sharded
  d_ref, dh_ref, dw_ref = ref_fused_value_and_grad(
      hs, ws, ht, wt, ct, tokens=tok, kind=kind, beta=0.3, tau=0.5, scap=3.0, tcap=5.0
  )
  assert_close(d, d_ref, 1e-5, "value")
  assert_close(dh, dh_ref, 1e-5, "d hidden")
  assert_close(dw, dw_ref, 1e-5, "d unembed")
  # Only per-token vectors (and the [N, Ds] hidden gradient) cross devices: no all-gather at all.
  hlo = fn.lower(*args).compile().as_text()
  assert "all-gather" not in hlo
  shapes = set(re.findall(r"= \(?f32\[([\d,]*)\][^=]*all-reduce\(", hlo))
  assert shapes and shapes <= {"5", "5,4"}, shapes


@pytest.mark.parametrize("shape", [(2, 4), (4, 2)], ids=str)
def test_vocab_parallel_with_token_sharding(shape):
  """Tokens sharded over "data", vocabulary over "tensor": same values and gradients."""
  mesh = _mesh(shape)
  hs, ws, ht, wt, ct, tok = fused_inputs(4, n=8, v=V)
  kw = dict(kind="skew_reverse_kl", alpha=0.2, temperature=2.0, impl="chunked")
  rows = NamedSharding(mesh, P("data", None))
  cols = NamedSharding(mesh, P(None, "tensor"))

  def f(a, b, c, e, **extra):
    d = kernels.fused_linear_divergence(a, b, c, e, **kw, **extra)
    return jnp.sum(d * ct), d

  g = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)
  (_, d1), (dh1, dw1) = jax.jit(g)(hs, ws, ht, wt)
  sharded = functools.partial(g, layout=Layout(mesh, "tensor", ("data",)), vocab_block=3)
  args = (
      jax.device_put(hs, rows),
      jax.device_put(ws, cols),
      jax.device_put(ht, rows),
      jax.device_put(wt, cols),
  )
  fn = jax.jit(sharded)
  (_, d), (dh, dw) = fn(*args)
  np.testing.assert_allclose(d, d1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dh, dh1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dw, dw1, rtol=1e-5, atol=1e-6)
  assert dh.sharding.spec == P("data", None) and dw.sharding.spec == P(None, "tensor")
  assert "all-gather" not in fn.lower(*args).compile().as_text()


def test_vocab_parallel_bad_axis():
  hs, ws, ht, wt, _, _ = fused_inputs(3, v=V)
  with pytest.raises(ValueError, match="vocab_axis='model'"):
    kernels.fused_linear_divergence(hs, ws, ht, wt, kind="jsd", layout=Layout(_mesh((8,)), "model"))
  hs, ws, ht, wt, _, _ = fused_inputs(3, v=60)
  with pytest.raises(ValueError, match="not divisible"):
    kernels.fused_linear_divergence(
        hs, ws, ht, wt, kind="jsd", layout=Layout(_mesh((8,)), "tensor")
    )
  hs, ws, ht, wt, _, _ = fused_inputs(3, n=5, v=V)
  with pytest.raises(ValueError, match="not divisible by the 2 shards"):
    kernels.fused_linear_divergence(
        hs, ws, ht, wt, kind="jsd", layout=Layout(_mesh((2, 4)), "tensor", ("data",))
    )


def test_vocab_parallel_token_stats_match_one_device():
  """Entropies and log p_S(token) psum-ed over vocabulary shards equal the unsharded pass (the
  sampled token's column lives on one shard only)."""
  hs, ws, ht, wt, _, tok = fused_inputs(4, n=8, v=V)
  mesh = _mesh((2, 4))
  kw = dict(
      kind="jsd",
      beta=0.3,
      temperature=1.3,
      tokens=jnp.asarray(tok),
      vocab_block=3,
      return_stats=True,
  )
  _, one = kernels.fused_linear_divergence(*(jnp.asarray(x) for x in (hs, ws, ht, wt)), **kw)
  _, sharded = jax.jit(
      lambda *a: kernels.fused_linear_divergence(*a, layout=Layout(mesh, "tensor", ("data",)), **kw)
  )(hs, ws, ht, wt)
  for a, b in zip(one, sharded):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
