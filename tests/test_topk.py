"""Top-k divergences (dense `divergences.topk_divergence`, fused `kernels.fused_linear_topk_divergence`)
against a float64 numpy reference written here from the definitions: the (k+1)-way distributions
p(i), i in K, and p(tail) = 1 - sum_K p, every kind applied to them; gradients by central finite
differences of that reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from divergence_reference import KINDS, assert_close
from gkd_jax import divergences, kernels
from gkd_jax.divergences import topk
from gkd_jax.kernels import fused_topk as kernel_topk

N, D, V = 4, 5, 37  # V = 4 * 8 + 5: ragged against vocab_block=8
CASES = ((1.0, None, None), (0.7, 3.0, 5.0))  # (temperature, student_softcap, teacher_softcap)


# ---------------------------------------------------------------------------------------------------
# float64 numpy reference


def _np_scale(z, cap, tau):
  z = np.asarray(z, np.float64)
  if cap is not None:
    z = cap * np.tanh(z / cap)
  return z / tau


def _np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _kplus1_probs(zs, ids, lp, tau, cap):
  """(P_S, P_T) [N, k+1] in float64: the k ids, then the tail (the mass outside K)."""
  p = _np_softmax(_np_scale(zs, cap, tau))
  k = ids.shape[-1]
  outside = np.ones_like(p, bool)
  np.put_along_axis(outside, ids, False, axis=-1)
  ps = np.concatenate([np.take_along_axis(p, ids, -1), (p * outside).sum(-1, keepdims=True)], -1)
  pt_k = np.exp(np.asarray(lp, np.float64))
  tail = np.zeros(pt_k.shape[:-1]) if k == p.shape[-1] else np.maximum(1.0 - pt_k.sum(-1), 0.0)
  pt = np.concatenate([pt_k, tail[..., None]], -1)
  return ps, pt / pt.sum(-1, keepdims=True)  # (the float32 input sums to 1 only up to rounding)


def _np_kl(p, q):
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(-1)


def _np_divergence(ps, pt, kind, beta, alpha, bucket):
  if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
    return _np_kl(pt, ps)
  if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
    return _np_kl(ps, pt)
  if kind == "jsd":
    m = beta * pt + (1 - beta) * ps
    return beta * _np_kl(pt, m) + (1 - beta) * _np_kl(ps, m)
  if kind == "skew_forward_kl":
    return _np_kl(pt, alpha * pt + (1 - alpha) * ps)
  if kind == "skew_reverse_kl":
    return _np_kl(ps, (1 - alpha) * pt + alpha * ps)
  if kind == "tvd":
    return 0.5 * np.abs(pt - ps).sum(-1)
  if kind == "sampled_reverse_kl":
    b = bucket[:, None]
    return (np.log(np.take_along_axis(ps, b, -1)) - np.log(np.take_along_axis(pt, b, -1)))[:, 0]
  raise ValueError(kind)


def _np_bucket(tokens, ids):
  hit = ids == tokens[:, None]
  return np.where(hit.any(-1), hit.argmax(-1), ids.shape[-1])


def ref_value_and_grad(
    zs, ids, lp, ct, *, kind, beta=0.5, alpha=0.1, tau=1.0, cap=None, tokens=None, h=1e-5
):
  """(values [N], d sum(ct * values) / d zs [N, V]) in float64; sampled_reverse_kl's gradient is the
  policy-gradient estimator ct * d * d/dz log P_S(bucket)."""
  zs = np.asarray(zs, np.float64)
  bucket = None if tokens is None else _np_bucket(tokens, ids)

  def values(z):
    ps, pt = _kplus1_probs(z, ids, lp, tau, cap)
    return _np_divergence(ps, pt, kind, beta, alpha, bucket)

  def diffed(z):
    if kind != "sampled_reverse_kl":
      return values(z)
    ps, _ = _kplus1_probs(z, ids, lp, tau, cap)
    return np.log(np.take_along_axis(ps, bucket[:, None], -1))[:, 0]

  d = values(zs)
  weight = ct * (d if kind == "sampled_reverse_kl" else 1.0)
  grad = np.zeros_like(zs)
  for v in range(zs.shape[1]):  # each row depends on its own logits only: perturb a column at once
    e = np.zeros_like(zs)
    e[:, v] = h
    grad[:, v] = weight * (diffed(zs + e) - diffed(zs - e)) / (2 * h)
  return d, grad


# ---------------------------------------------------------------------------------------------------
# inputs


def _teacher_topk(r, k, tau, tcap, n=N, v=V):
  """Top-k ids of random teacher logits and their float32 log-probs (float64 log-softmax, rounded)."""
  zt = _np_scale(3.0 * r.normal(size=(n, v)), tcap, tau)
  lt = zt - zt.max(-1, keepdims=True)
  lt = lt - np.log(np.exp(lt).sum(-1, keepdims=True))
  ids = np.argsort(-lt, axis=-1)[:, :k]
  return ids.astype(np.int32), np.take_along_axis(lt, ids, -1).astype(np.float32)


def _inputs(seed, k, tau, tcap, n=N, v=V):
  r = np.random.default_rng(seed)
  zs = (3.0 * r.normal(size=(n, v))).astype(np.float32)
  ids, lp = _teacher_topk(r, k, tau, tcap, n, v)
  ct = r.uniform(0.5, 1.5, size=n).astype(np.float32)
  tok = r.integers(0, v, size=n)
  tok[0] = ids[0, 0]  # one sampled token inside K (the others mostly fall in the tail when k < V)
  return zs, ids, lp, ct, tok


def _kw(spec):
  return dict(kind=spec["kind"], beta=spec.get("beta", 0.5), alpha=spec.get("alpha", 0.1))


def _dense_value_and_grad(zs, ids, lp, ct, tok, **kw):
  def f(z):
    d = divergences.topk_divergence(z, ids, lp, tokens=tok, **kw)
    return jnp.sum(d * ct), d

  (_, d), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(zs))
  return np.asarray(d), np.asarray(g)


# ---------------------------------------------------------------------------------------------------
# dense form


# every kind at an interior beta / alpha, and jsd's exact ends (the full grid of ends is
# `token_divergence`'s, tested in test_divergences.py, and reached through the same call)
SPECS = [dict(kind=kind, beta=0.3, alpha=0.2) for kind in KINDS] + [
    dict(kind="jsd", beta=0.0),
    dict(kind="jsd", beta=1.0),
    dict(kind="skew_forward_kl", alpha=1.0),
]


@pytest.mark.parametrize("k", [1, 8, V])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(map(str, s.values())))
def test_dense_against_float64_reference(spec, k):
  for tau, scap, tcap in CASES:
    zs, ids, lp, ct, tok = _inputs(k, k, tau, tcap)
    tokens = tok if spec["kind"] == "sampled_reverse_kl" else None
    d, g = _dense_value_and_grad(
        zs, ids, lp, ct, tokens, temperature=tau, student_softcap=scap, **_kw(spec)
    )
    d_ref, g_ref = ref_value_and_grad(
        zs, ids, lp, ct, tau=tau, cap=scap, tokens=tokens, **_kw(spec)
    )
    where = f"{spec} k={k} tau={tau} cap={scap}"
    assert d.dtype == np.float32 and d.shape == (N,)
    assert_close(d, d_ref, 1e-5, "value " + where)
    assert_close(g, g_ref, 1e-5, "grad " + where)


@pytest.mark.parametrize("kind", KINDS)
def test_k_equal_v_is_the_full_divergence(kind):
  """k = V (ids a permutation of the vocabulary): the tail is empty for both and the result is the
  full `token_divergence` of the teacher's logits, value and student gradient."""
  r = np.random.default_rng(3)
  tau, scap, tcap = 0.8, 4.0, 6.0
  zs = jnp.asarray(3.0 * r.normal(size=(N, V)), jnp.float32)
  zt = jnp.asarray(3.0 * r.normal(size=(N, V)), jnp.float32)
  lt = divergences.log_softmax(divergences.softcap_and_scale(zt, tcap, tau))
  ids = jnp.asarray(np.stack([r.permutation(V) for _ in range(N)]), jnp.int32)
  lp = jnp.take_along_axis(lt, ids, -1)
  tok = jnp.asarray(r.integers(0, V, size=N))
  kw = dict(kind=kind, beta=0.3, alpha=0.2, temperature=tau, student_softcap=scap, tokens=tok)

  def per_token_and_grad(f):
    (_, d), g = jax.value_and_grad(lambda z: (lambda d: (d.sum(), d))(f(z)), has_aux=True)(zs)
    return d, g

  d_full, g_full = per_token_and_grad(
      lambda z: divergences.token_divergence(z, zt, teacher_softcap=tcap, **kw)
  )
  d_topk, g_topk = per_token_and_grad(lambda z: divergences.topk_divergence(z, ids, lp, **kw))
  np.testing.assert_allclose(d_topk, d_full, rtol=2e-6, atol=1e-6)
  np.testing.assert_allclose(g_topk, g_full, rtol=2e-5, atol=1e-6)


def test_confident_student_keeps_an_exact_tail():
  """A student whose top-k mass is 1 - 1e-9: its tail is the mass outside K, not 1 - sum_K p_S (that
  rounds to 0 in float32 and would make forward KL infinite)."""
  k = 4
  zs, ids, lp, ct, _ = _inputs(5, k, 1.0, None)
  rows = np.arange(N)[:, None]
  zs[rows, ids] += 30.0  # the student puts ~all its mass on the teacher's top-k
  for kind in ("forward_kl", "jsd", "skew_forward_kl"):
    d, g = _dense_value_and_grad(zs, ids, lp, ct, None, kind=kind)
    d_ref, g_ref = ref_value_and_grad(zs, ids, lp, ct, kind=kind)
    assert np.all(np.isfinite(d)) and np.all(np.isfinite(g)), kind
    if kind == "forward_kl":
      assert d.min() > 1.0  # the tail term dominates
    assert_close(d, d_ref, 1e-5, kind)
    assert_close(g, g_ref, 1e-5, kind)


def test_masked_and_large_magnitude_logits():
  """-inf student logits (masked vocabulary) outside K get 0 gradient; an offset of 1e4 keeps float32
  precision."""
  zs, ids, lp, ct, _ = _inputs(6, 8, 1.0, None)
  masked = np.ones(V, bool)
  masked[np.unique(ids)] = False
  masked[np.flatnonzero(masked)[::2]] = False  # keep half of the non-K columns alive
  zs_m = zs.copy()
  zs_m[:, masked] = -np.inf
  keep = ~masked
  d, g = _dense_value_and_grad(zs_m, ids, lp, ct, None, kind="jsd", beta=0.4)
  remap = np.cumsum(keep) - 1
  d_ref, g_ref = ref_value_and_grad(zs[:, keep], remap[ids], lp, ct, kind="jsd", beta=0.4)
  assert_close(d, d_ref, 1e-5, "masked value")
  assert_close(g[:, keep], g_ref, 1e-5, "masked grad")
  assert np.all(g[:, masked] == 0)
  zs_big = (zs + 1e4).astype(np.float32)
  d, g = _dense_value_and_grad(zs_big, ids, lp, ct, None, kind="reverse_kl")
  d_ref, g_ref = ref_value_and_grad(zs_big, ids, lp, ct, kind="reverse_kl")
  assert_close(d, d_ref, 1e-5, "offset 1e4 value")
  assert_close(g, g_ref, 1e-5, "offset 1e4 grad")


def test_jit_and_leading_dims():
  zs, ids, lp, _, _ = _inputs(7, 8, 1.0, None, n=6)
  flat = divergences.topk_divergence(jnp.asarray(zs), ids, lp, kind="tvd")
  shaped = jax.jit(lambda z, i, p: divergences.topk_divergence(z, i, p, kind="tvd"))(
      zs.reshape(2, 3, V), ids.reshape(2, 3, 8), lp.reshape(2, 3, 8)
  )
  assert shaped.shape == (2, 3)
  np.testing.assert_allclose(np.asarray(shaped).reshape(-1), flat, rtol=1e-6)


@pytest.mark.parametrize(
    "change, needle",
    [
        (dict(ids=np.zeros((N, V + 1), np.int32)), r"k=38 must be in \[1, V=37\]"),
        (dict(ids=np.full((N, 2), V, np.int32)), r"outside \[0, V=37\)"),
        (dict(ids=np.full((N, 2), -1, np.int32)), r"outside \[0, V=37\)"),
        (dict(ids=np.zeros((N, 2), np.int32)), "repeated id"),
        (
            dict(ids=np.zeros((N + 1, 2), np.int32)),
            r"teacher_topk_ids.shape=\(5, 2\) must be \(4,\)",
        ),
        (dict(lp=np.full((N, 3), -1.0, np.float32)), r"teacher_topk_logprobs.shape=\(4, 3\) !="),
        (dict(lp=np.full((N, 2), -0.1, np.float32)), "exp sums to 1.8"),
        (dict(lp=np.full((N, 2), np.nan, np.float32)), "not NaN"),
        (dict(ids=np.tile(np.arange(2.0), (N, 1))), "must be an integer type"),
        (dict(kind="sampled_reverse_kl"), "tokens=None"),
        (dict(kind="kl"), "kind='kl'"),
        (dict(beta=2.0), "beta=2.0"),
    ],
)
@pytest.mark.parametrize("entry", ["dense", "fused"])
def test_bad_input(change, needle, entry):
  r = np.random.default_rng(8)
  args = dict(ids=np.tile(np.arange(2, dtype=np.int32), (N, 1)), kind="jsd", beta=0.5)
  args.update(change)
  args.setdefault("lp", np.full(args["ids"].shape, -2.0, np.float32))
  kw = dict(kind=args["kind"], beta=args["beta"])
  with pytest.raises(ValueError, match=needle):
    if entry == "dense":
      divergences.topk_divergence(jnp.asarray(r.normal(size=(N, V))), args["ids"], args["lp"], **kw)
    else:
      kernels.fused_linear_topk_divergence(
          jnp.ones((N, D)), jnp.ones((D, V)), args["ids"], args["lp"], **kw
      )


# ---------------------------------------------------------------------------------------------------
# fused form


def _fused_inputs(seed, k, tau, tcap, v=V, n=N, d=D):
  r = np.random.default_rng(seed)
  hs = r.normal(size=(n, d)).astype(np.float32)
  ws = r.normal(size=(d, v)).astype(np.float32)
  ids, lp = _teacher_topk(r, k, tau, tcap, n, v)
  ct = r.uniform(0.5, 1.5, size=n).astype(np.float32)
  tok = r.integers(0, v, size=n)
  tok[0] = ids[0, 0]
  return hs, ws, ids, lp, ct, tok


def _grads(f, hs, ws, ct, jit=True):
  loss = lambda a, b: (lambda d: (jnp.sum(d * ct), d))(f(a, b))  # noqa: E731
  vg = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  (_, d), (dh, dw) = (jax.jit(vg) if jit else vg)(jnp.asarray(hs), jnp.asarray(ws))
  return np.asarray(d), np.asarray(dh), np.asarray(dw)


@pytest.mark.parametrize("k", [1, 8, V])
def test_fused_student_statistics_vjp(k):
  """The fused kernel's custom VJP is that of the student's (k+1)-way log-probs, whatever the kind:
  against the dense form's autodiff under a random cotangent (vocab_block=8 over V=37: a ragged,
  shifted last block)."""
  tau, scap = 0.7, 3.0
  hs, ws, ids, _, _, _ = _fused_inputs(30 + k, k, tau, None)
  r = np.random.default_rng(k)
  ct = r.normal(size=(N, k + 1)).astype(np.float32)
  ct[:, -1] = 0.0 if k == V else ct[:, -1]  # k = V: the tail is -inf for both (no gradient)

  def fused(a, b):
    stats = kernel_topk.student_stats(scap, tau, 8, a, b, jnp.asarray(ids))
    return topk.student_kplus1(*stats)

  def dense(a, b):
    z = divergences.softcap_and_scale(jnp.dot(a, b, precision="highest"), scap, tau)
    return topk.dense_student_kplus1(z, jnp.asarray(ids))

  def value_and_vjp(f):
    out, vjp = jax.vjp(f, jnp.asarray(hs), jnp.asarray(ws))
    return (out,) + vjp(jnp.asarray(ct))

  both = jax.jit(lambda: (value_and_vjp(fused), value_and_vjp(dense)))()
  (s_f, dh_f, dw_f), (s_d, dh_d, dw_d) = jax.tree.map(np.asarray, both)
  if k == V:
    assert np.all(s_f[:, -1] == -np.inf) and np.all(s_d[:, -1] == -np.inf)
  live = k + 1 if k < V else k
  assert_close(s_f[:, :live], s_d[:, :live], 1e-5, "(k+1)-way log-probs")
  assert_close(dh_f, dh_d, 1e-5, "d hidden")
  assert_close(dw_f, dw_d, 1e-5, "d unembed")


# The kernel's own part (the student statistics and their VJP) is kind-agnostic and tested above for
# every k; end to end, a few kinds suffice.
FUSED_CASES = (
    dict(kind="jsd", beta=0.3, k=8),
    dict(kind="forward_kl", k=V),
    dict(kind="sampled_reverse_kl", k=1),
)


@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_fused_equals_dense(case):
  """End to end: fused (vocab_block=8 over V=37) vs dense on hs @ W, values and gradients to hidden and
  unembedding, and both against the float64 reference through the chain rule z = hs @ W."""
  case = dict(case)
  k = case.pop("k")
  tau, scap, tcap = 0.7, 3.0, 5.0
  hs, ws, ids, lp, ct, tok = _fused_inputs(10 + k, k, tau, tcap)
  tokens = tok if case["kind"] == "sampled_reverse_kl" else None
  kw = dict(temperature=tau, student_softcap=scap, tokens=tokens, **case)
  d_f, dh_f, dw_f = _grads(
      lambda a, b: kernels.fused_linear_topk_divergence(a, b, ids, lp, vocab_block=8, **kw),
      hs,
      ws,
      ct,
  )
  d_d, dh_d, dw_d = _grads(
      lambda a, b: divergences.topk_divergence(jnp.dot(a, b, precision="highest"), ids, lp, **kw),
      hs,
      ws,
      ct,
      jit=False,
  )
  assert d_f.dtype == np.float32 and d_f.shape == (N,)
  assert_close(d_f, d_d, 1e-5, f"value {case} k={k}")
  assert_close(dh_f, dh_d, 1e-5, f"d hidden {case} k={k}")
  assert_close(dw_f, dw_d, 1e-5, f"d unembed {case} k={k}")
  d_ref, g_ref = ref_value_and_grad(
      hs.astype(np.float64) @ ws, ids, lp, ct, tau=tau, cap=scap, tokens=tokens, **case
  )
  assert_close(d_f, d_ref, 1e-5, "value vs reference")
  assert_close(dh_f, g_ref @ ws.T.astype(np.float64), 1e-5, "d hidden vs reference")
  assert_close(dw_f, hs.astype(np.float64).T @ g_ref, 1e-5, "d unembed vs reference")


def test_fused_token_parallel_layout_and_spec():
  """Tokens sharded over 4 devices (Layout.token_axes) give the single-device values and gradients;
  a DivergenceSpec passed whole equals its fields by keyword; a sharded vocabulary is refused."""
  n = 8
  hs, ws, ids, lp, ct, _ = _fused_inputs(40, 8, 0.7, None, n=n)
  spec = divergences.DivergenceSpec(kind="jsd", beta=0.3, temperature=0.7, student_softcap=3.0)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]).reshape(4, 1), ("data", "tensor"))
  one = _grads(
      lambda a, b: kernels.fused_linear_topk_divergence(
          a, b, ids, lp, kind="jsd", beta=0.3, temperature=0.7, student_softcap=3.0, vocab_block=8
      ),
      hs,
      ws,
      ct,
  )
  sharded = _grads(
      lambda a, b: kernels.fused_linear_topk_divergence(
          a, b, ids, lp, spec, vocab_block=8, layout=kernels.Layout(mesh, token_axes=("data",))
      ),
      hs,
      ws,
      ct,
  )
  for x, y, what in zip(one, sharded, ("value", "d hidden", "d unembed")):
    assert_close(y, x, 1e-6, what)
  with pytest.raises(ValueError, match="does not support a sharded vocabulary"):
    kernels.fused_linear_topk_divergence(
        hs, ws, ids, lp, spec, layout=kernels.Layout(mesh, vocab_axis="tensor")
    )


def test_fused_default_block_and_bf16():
  """Default block (capped at V) and bfloat16 hidden/unembedding: close to the float32 dense form."""
  hs, ws, ids, lp, ct, _ = _fused_inputs(20, 8, 1.0, None, v=300)
  f = lambda a, b: kernels.fused_linear_topk_divergence(a, b, ids, lp, kind="forward_kl")  # noqa: E731
  d, dh, dw = _grads(f, jnp.asarray(hs, jnp.bfloat16), jnp.asarray(ws, jnp.bfloat16), ct)
  assert d.dtype == np.float32 and dh.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
  hs32 = np.asarray(jnp.asarray(hs, jnp.bfloat16), np.float32)
  ws32 = np.asarray(jnp.asarray(ws, jnp.bfloat16), np.float32)
  d_ref, dh_ref, dw_ref = _grads(
      lambda a, b: divergences.topk_divergence(
          jnp.dot(a, b, precision="highest"), ids, lp, kind="forward_kl"
      ),
      hs32,
      ws32,
      ct,
      jit=False,
  )
  assert_close(d, d_ref, 1e-2, "bf16 value")
  assert_close(np.asarray(dh, np.float32), dh_ref, 1e-2, "bf16 d hidden")
  assert_close(np.asarray(dw, np.float32), dw_ref, 1e-2, "bf16 d unembed")


def test_fused_memory_stays_far_below_nxv():
  """Compiled temporaries of the fused value-and-grad at N=2048, V=32768 (N*V*4 bytes = 256 MiB)."""
  n, d, v, k = 2048, 64, 32768, 8
  structs = (
      jax.ShapeDtypeStruct((n, d), jnp.float32),
      jax.ShapeDtypeStruct((d, v), jnp.float32),
      jax.ShapeDtypeStruct((n, k), jnp.int32),
      jax.ShapeDtypeStruct((n, k), jnp.float32),
  )

  def loss(hs, ws, ids, lp):
    return kernels.fused_linear_topk_divergence(
        hs, ws, ids, lp, kind="jsd", student_softcap=30.0, vocab_block=512
    ).sum()

  def dense_loss(hs, ws, ids, lp):
    return divergences.topk_divergence(hs @ ws, ids, lp, kind="jsd", student_softcap=30.0).sum()

  def temp_bytes(f):
    return jax.jit(f).lower(*structs).compile().memory_analysis().temp_size_in_bytes

  temp = temp_bytes(jax.grad(loss, argnums=(0, 1)))
  nv = n * v * 4
  assert temp_bytes(dense_loss) > nv  # the dense form holds [N, V] (the measurement can see it)
  assert temp < nv / 8, f"fused temporaries {temp / 2**20:.1f} MiB vs N*V*4 = {nv / 2**20:.0f} MiB"
