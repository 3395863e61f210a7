"""Streaming (chunked XLA) divergences against the float64 textbook reference: the issue's full grid."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from divergence_reference import (
    KINDS,
    assert_close,
    grid,
    ref_fused_value_and_grad,
    ref_student_probs,
    ref_value_and_grad,
)
from gkd_jax import kernels
from gkd_jax.divergences import DivergenceSpec
from gkd_jax.kernels import chunked, common

TAUS = (0.5, 1.0, 2.0)
CAPS = ((None, None), (3.0, 5.0))
N, DS, DT, V = 5, 4, 6, 37  # V = 4 * 8 + 5: ragged last vocabulary block of 8


def fused_inputs(seed, dtype=np.float32, n=N, v=V):
  r = np.random.default_rng(seed)
  hs = r.normal(size=(n, DS)).astype(np.float32)
  ws = r.normal(size=(DS, v)).astype(np.float32)
  ht = r.normal(size=(n, DT)).astype(np.float32)
  wt = (0.7 * r.normal(size=(DT, v))).astype(np.float32)
  ct = r.uniform(0.5, 1.5, size=n).astype(np.float32)
  tok = r.integers(0, v, size=n)
  cast = lambda x: np.asarray(jnp.asarray(x, dtype).astype(jnp.float32))  # noqa: E731
  return tuple(cast(x) for x in (hs, ws, ht, wt)) + (ct, tok)


def fused_value_and_grads(impl, hs, ws, ht, wt, ct, tok, dtype=jnp.float32, **kw):
  """(d [N], d/d hs, d/d ws, d/d ht, d/d wt) of sum(ct * d), jitted."""

  def f(a, b, c, e):
    d = kernels.fused_linear_divergence(a, b, c, e, tokens=jnp.asarray(tok), impl=impl, **kw)
    return jnp.sum(d * ct), d

  args = [jnp.asarray(x, dtype) for x in (hs, ws, ht, wt)]
  (_, d), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))(*args)
  return (np.asarray(d),) + tuple(np.asarray(g, np.float32) for g in grads)


def check_fused(impl, spec, tau, caps, seed=0, dtype=jnp.float32, rtol=1e-5, **blocks):
  hs, ws, ht, wt, ct, tok = fused_inputs(seed, dtype)
  kw = dict(kind=spec["kind"], beta=spec.get("beta", 0.5), alpha=spec.get("alpha", 0.1))
  d, dhs, dws, dht, dwt = fused_value_and_grads(
      impl,
      hs,
      ws,
      ht,
      wt,
      ct,
      tok,
      dtype=dtype,
      temperature=tau,
      student_softcap=caps[0],
      teacher_softcap=caps[1],
      **kw,
      **blocks,
  )
  d_ref, dhs_ref, dws_ref = ref_fused_value_and_grad(
      hs, ws, ht, wt, ct, tokens=tok, tau=tau, scap=caps[0], tcap=caps[1], **kw
  )
  where = f"{impl} {spec} tau={tau} caps={caps}"
  assert d.dtype == np.float32 and d.shape == (hs.shape[0],)
  assert_close(d, d_ref, rtol, "value " + where)
  assert_close(dhs, dhs_ref, rtol, "d student_hidden " + where)
  assert_close(dws, dws_ref, rtol, "d student_unembed " + where)
  assert not dht.any() and not dwt.any(), "teacher must get zero gradients"


@functools.partial(jax.jit, static_argnums=(0, 1))
def _chunked_split_value_and_grads(struct, bv, values, hs, ws, ht, wt, ct, tok):
  """chunked.fused_split with the hyperparameters as runtime values: one compile per structure."""

  def f(a, b, c, e):
    d = chunked.fused_split(struct, bv, values, a, b, c, e, tok)[0]
    return jnp.sum(d * ct), d

  (_, d), grads = jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True)(hs, ws, ht, wt)
  return (d,) + grads


@pytest.mark.parametrize("kind", KINDS)
def test_fused_chunked_full_grid(kind):
  """Every kind x beta / alpha x tau x soft-cap on/off, values and gradients."""
  hs, ws, ht, wt, ct, tok = fused_inputs(0)
  for spec in [g for g in grid() if g["kind"] == kind]:
    for tau in TAUS:
      for caps in CAPS:
        kw = dict(kind=kind, beta=spec.get("beta", 0.5), alpha=spec.get("alpha", 0.1))
        full = DivergenceSpec(
            temperature=tau, student_softcap=caps[0], teacher_softcap=caps[1], **kw
        )
        struct, values = common.split(full)
        out = _chunked_split_value_and_grads(
            struct, 8, values, hs, ws, ht, wt, ct, jnp.asarray(tok)
        )
        d, dhs, dws, dht, dwt = (np.asarray(x) for x in out)
        d_ref, dhs_ref, dws_ref = ref_fused_value_and_grad(
            hs, ws, ht, wt, ct, tokens=tok, tau=tau, scap=caps[0], tcap=caps[1], **kw
        )
        where = f"{spec} tau={tau} caps={caps}"
        assert_close(d, d_ref, 1e-5, "value " + where)
        assert_close(dhs, dhs_ref, 1e-5, "d student_hidden " + where)
        assert_close(dws, dws_ref, 1e-5, "d student_unembed " + where)
        assert not dht.any() and not dwt.any()


@pytest.mark.parametrize(
    "spec",
    [
        dict(kind="jsd", beta=0.0),
        dict(kind="jsd", beta=0.9),
        dict(kind="skew_forward_kl", alpha=1.0),
        dict(kind="tvd"),
    ],
    ids=str,
)
def test_fused_chunked_public_api(spec):
  """The public entry point (static hyperparameters) on a few grid points."""
  check_fused("chunked", spec, 0.5, CAPS[1], vocab_block=8)


@pytest.mark.parametrize("kind", KINDS)
def test_fused_reference_impl(kind):
  check_fused("reference", dict(kind=kind, beta=0.3, alpha=0.2), 2.0, CAPS[1])


@pytest.mark.parametrize("kind", ["forward_kl", "jsd", "skew_reverse_kl", "sampled_reverse_kl"])
def test_fused_chunked_bf16(kind):
  check_fused(
      "chunked",
      dict(kind=kind, beta=0.5, alpha=0.1),
      1.0,
      CAPS[1],
      dtype=jnp.bfloat16,
      rtol=1e-2,
      vocab_block=16,
  )


def check_sampled_reverse_kl_unbiased(impl, tau, caps, **blocks):
  """E_{y ~ p_S}[grads of sampled_reverse_kl at y] (every y enumerated, weighted through the cotangent
  ct = p_S(y) per token) equals the gradient of sum KL(p_S || p_T), for the student hidden states and
  unembedding; E[value] = KL. Cannot pass with the pathwise gradient onehot(y) - p_S (mean 0)."""
  n, v = 3, 7
  hs, ws, ht, wt, _, _ = fused_inputs(21, n=n, v=v)
  ws = 2.0 * ws  # a student far enough from the teacher for a sizeable gradient
  kw = dict(temperature=tau, student_softcap=caps[0], teacher_softcap=caps[1])

  @jax.jit
  def grads(ct, tok):
    def f(a, b):
      d = kernels.fused_linear_divergence(
          a,
          b,
          jnp.asarray(ht),
          jnp.asarray(wt),
          tokens=tok,
          kind="sampled_reverse_kl",
          impl=impl,
          **kw,
          **blocks,
      )
      return jnp.sum(d * ct), d

    return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(jnp.asarray(hs), jnp.asarray(ws))

  p = ref_student_probs(np.asarray(hs, np.float64) @ ws, tau, caps[0])
  mean_d, mean_dh, mean_dw = np.zeros(n), np.zeros(hs.shape), np.zeros(ws.shape)
  for y in range(v):
    (_, d), (dh, dw) = grads(jnp.asarray(p[:, y], jnp.float32), jnp.full((n,), y, jnp.int32))
    mean_d += p[:, y] * np.asarray(d)
    mean_dh += np.asarray(dh)
    mean_dw += np.asarray(dw)
  kl, dh_kl, dw_kl = ref_fused_value_and_grad(
      hs, ws, ht, wt, np.ones(n), kind="reverse_kl", tau=tau, scap=caps[0], tcap=caps[1]
  )
  assert np.abs(dw_kl).max() > 1e-2
  assert_close(mean_d, kl, 1e-5, "E[value]")
  assert_close(mean_dh, dh_kl, 1e-5, "E[d student_hidden]")
  assert_close(mean_dw, dw_kl, 1e-5, "E[d student_unembed]")


@pytest.mark.parametrize("tau, caps", [(1.0, CAPS[0]), (0.7, CAPS[1])], ids=str)
@pytest.mark.parametrize("impl", ["chunked", "reference"])
def test_sampled_reverse_kl_gradient_is_unbiased(impl, tau, caps):
  check_sampled_reverse_kl_unbiased(
      impl, tau, caps, **({"vocab_block": 3} if impl == "chunked" else {})
  )


def test_sampled_reverse_kl_logits_gradient_is_unbiased():
  """The logits entry point (chunked.from_logits): same identity, float32 against float64."""
  n, v, tau, caps = 4, 7, 0.7, (3.0, 5.0)
  zs, zt, _, _ = _logit_inputs(22, n=(n,), v=v)
  kw = dict(
      kind="sampled_reverse_kl", temperature=tau, student_softcap=caps[0], teacher_softcap=caps[1]
  )
  grad = jax.jit(
      jax.grad(
          lambda a, ct, tok: jnp.sum(
              kernels.vocab_divergence(
                  a, jnp.asarray(zt), tokens=tok, impl="chunked", vocab_block=3, **kw
              )
              * ct
          )
      )
  )
  p = ref_student_probs(zs, tau, caps[0])
  mean_g = sum(
      np.asarray(
          grad(jnp.asarray(zs), jnp.asarray(p[:, y], jnp.float32), jnp.full((n,), y, jnp.int32))
      )
      for y in range(v)
  )
  _, g_kl = ref_value_and_grad(
      zs, zt, np.ones(n), kind="reverse_kl", tau=tau, scap=caps[0], tcap=caps[1]
  )
  assert_close(mean_g, g_kl, 1e-5, "E[grad]")


def test_sampled_reverse_kl_teacher_ruled_out_token():
  """A sampled token the teacher masks: value +inf for it, finite gradients (0 from that token)."""
  zs, zt, ct, tok = _logit_inputs(23, n=(6,))
  zt[0, tok[0]] = -np.inf
  f = lambda a: kernels.vocab_divergence(
      a,
      jnp.asarray(zt),
      kind="sampled_reverse_kl",  # noqa: E731
      tokens=jnp.asarray(tok),
      impl="chunked",
      vocab_block=8,
  )
  d, vjp = jax.vjp(f, jnp.asarray(zs))
  (g,) = vjp(jnp.asarray(ct))
  d, g = np.asarray(d), np.asarray(g)
  assert np.isposinf(d[0]) and np.all(np.isfinite(d[1:]))
  assert np.all(g[0] == 0) and np.all(np.isfinite(g))
  _, g_ref = ref_value_and_grad(zs[1:], zt[1:], ct[1:], tokens=tok[1:], kind="sampled_reverse_kl")
  assert_close(g[1:], g_ref, 1e-5, "other tokens")


def test_fused_chunked_block_sizes():
  """Whole vocabulary in one block, and a block that does not divide V."""
  for vb in (V, 64, 5):
    check_fused("chunked", dict(kind="jsd", beta=0.9), 1.0, CAPS[0], vocab_block=vb)


def _logit_inputs(seed, n=(2, 3), v=V):
  r = np.random.default_rng(seed)
  zs = (3 * r.normal(size=n + (v,))).astype(np.float32)
  zt = (3 * r.normal(size=n + (v,))).astype(np.float32)
  ct = r.uniform(0.5, 1.5, size=n).astype(np.float32)
  return zs, zt, ct, r.integers(0, v, size=n)


@functools.partial(jax.jit, static_argnums=0)
def _logits_value_and_grad(struct, values, zs, zt, ct, tok):
  def f(x):
    d = chunked.from_logits_split(
        struct, 8, values, x.reshape(6, V), zt.reshape(6, V), tok.reshape(6)
    )
    return jnp.sum(d.reshape(ct.shape) * ct), d.reshape(ct.shape)

  (_, d), g = jax.value_and_grad(f, has_aux=True)(zs)
  return d, g


@pytest.mark.parametrize("kind", KINDS)
def test_vocab_divergence_masked_and_large(kind):
  """Logits path: -inf masked columns, magnitude 1e4, leading dims, ragged block."""
  zs, zt, ct, tok = _logit_inputs(1)
  keep = np.random.default_rng(2).uniform(size=V) > 0.3
  keep[tok.reshape(-1)] = True
  zs[..., ~keep] = -np.inf
  zt[..., ~keep] = -np.inf
  cases = [(zs, zt, 0.5, (3.0, 5.0), keep), (1e4 + zs / 3, 1e4 + zt / 3, 2.0, (None, None), keep)]
  zs2, zt2, _, _ = _logit_inputs(3)
  cases.append((1e4 / 3 * zs2, 1e4 / 3 * zt2, 1.0, (None, None), None))
  for a, b, tau, caps, kc in cases:
    kw = dict(kind=kind, beta=0.3, alpha=0.2)

    spec = DivergenceSpec(temperature=tau, student_softcap=caps[0], teacher_softcap=caps[1], **kw)
    d, g = _logits_value_and_grad(*common.split(spec), jnp.asarray(a), jnp.asarray(b), ct, tok)
    assert d.shape == (2, 3)
    if kc is not None:
      a = np.where(kc, a, 0.0)
      b = np.where(kc, b, 0.0)
    d_ref, g_ref = ref_value_and_grad(
        a.reshape(6, V),
        b.reshape(6, V),
        ct.reshape(6),
        keep_cols=kc,
        tokens=tok.reshape(6),
        tau=tau,
        scap=caps[0],
        tcap=caps[1],
        **kw,
    )
    assert_close(np.asarray(d).reshape(6), d_ref, 1e-5, f"value tau={tau}")
    assert_close(np.asarray(g).reshape(6, V), g_ref, 1e-5, f"grad tau={tau}")
    if kc is not None:
      assert np.all(np.asarray(g)[..., ~kc] == 0)


def test_vocab_divergence_public_api():
  """Public entry (auto = chunked on CPU) with leading dims, values and student-only gradients."""
  zs, zt, ct, tok = _logit_inputs(4)
  kw = dict(kind="jsd", beta=0.1, temperature=2.0, student_softcap=3.0)

  def f(a, b, impl):
    return jnp.sum(kernels.vocab_divergence(a, b, impl=impl, vocab_block=16, **kw) * ct)

  g = jax.jit(jax.value_and_grad(f, argnums=(0, 1)), static_argnums=2)
  v, (gs, gt) = g(jnp.asarray(zs), jnp.asarray(zt), "auto")
  v_ref, g_ref = ref_value_and_grad(
      zs.reshape(6, V), zt.reshape(6, V), ct.reshape(6), tau=2.0, scap=3.0, kind="jsd", beta=0.1
  )
  assert_close(v, np.sum(v_ref * ct.reshape(6)), 1e-5, "value")
  assert_close(np.asarray(gs).reshape(6, V), g_ref, 1e-5, "grad")
  assert not np.asarray(gt).any()
  v2, (gs2, _) = g(jnp.asarray(zs), jnp.asarray(zt), "reference")
  assert_close(gs2, gs, 1e-5, "reference impl")


def test_mixed_dtypes_float32_student_bf16_teacher():
  """The teacher lives in its own dtype: float32 student + bf16 teacher equals the float64 reference."""
  hs, ws, ht, wt, ct, tok = fused_inputs(5)
  ht16, wt16 = jnp.asarray(ht, jnp.bfloat16), jnp.asarray(wt, jnp.bfloat16)

  def f(a, b):
    d = kernels.fused_linear_divergence(
        a, b, ht16, wt16, kind="jsd", beta=0.1, impl="chunked", vocab_block=8
    )
    return jnp.sum(d * ct), d

  (_, d), (dh, dw) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(hs, ws)
  assert dh.dtype == jnp.float32 and dw.dtype == jnp.float32
  d_ref, dh_ref, dw_ref = ref_fused_value_and_grad(
      hs, ws, np.asarray(ht16, np.float32), np.asarray(wt16, np.float32), ct, kind="jsd", beta=0.1
  )
  assert_close(d, d_ref, 1e-5, "value")
  assert_close(dh, dh_ref, 1e-5, "d hidden")
  assert_close(dw, dw_ref, 1e-5, "d unembed")
