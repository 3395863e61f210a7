"""score(): padding invariance, hidden states vs logits, gradients, bfloat16, and use under jit with
params sharded by their logical axes on a mesh of fake devices. (Exactness against an independent
float64 forward is in test_decoder.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import gkd_jax
from gkd_jax.models import build, unembedding
from gkd_jax.testing import sharded_2x2x2, tiny


def _batch(cfg, T=11, seed=1):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, cfg.vocab_size, (3, T)).astype(np.int32)
  mask = np.ones((3, T), np.int32)
  mask[1, :4] = 0
  mask[2, -3:] = 0
  return tokens, mask


def test_padding_does_not_change_valid_logits():
  model, params = tiny("gemma3")
  tokens, _ = _batch(model.config)
  row = tokens[0, :7]
  left = np.concatenate([np.full(4, 5), row])[None]
  right = np.concatenate([row, np.full(4, 7)])[None]
  pad = np.concatenate([np.zeros(4), np.ones(7)])[None].astype(np.int32)
  base = np.asarray(gkd_jax.score(model, params, row[None]))[0]
  got_l = np.asarray(gkd_jax.score(model, params, left, pad))[0, 4:]
  got_r = np.asarray(gkd_jax.score(model, params, right, pad[:, ::-1]))[0, :7]
  np.testing.assert_allclose(got_l, base, atol=1e-5)
  np.testing.assert_allclose(got_r, base, atol=1e-5)


def test_model_is_a_static_jit_argument_and_score_is_differentiable():
  model, params = tiny("qwen2")
  assert hash(model) == hash(build(model.config)) and model == build(model.config)
  tokens, mask = _batch(model.config, T=6)

  def loss(p):
    return jnp.mean(gkd_jax.score(model, p, tokens, mask) ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  g = grads["layers"][0]["attn"]["q_bias"]
  assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) > 0

  def loss_remat(p):
    return jnp.mean(gkd_jax.score(model, p, tokens, mask, remat=True) ** 2)

  grads_remat = jax.jit(jax.grad(loss_remat))(params)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_remat)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_bfloat16_model_tracks_float32():
  model, params = tiny("gemma2")
  bf = build(model.config, jnp.bfloat16)
  params_bf = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  tokens, mask = _batch(model.config, T=6)
  ref = np.asarray(gkd_jax.score(model, params, tokens, mask))
  got = gkd_jax.score(bf, params_bf, tokens, mask)
  hidden = gkd_jax.score(bf, params_bf, tokens, mask, return_hidden=True)
  assert got.dtype == jnp.float32 and hidden.dtype == jnp.bfloat16
  ok = mask == 1
  assert np.abs(np.asarray(got)[ok] - ref[ok]).max() < 0.05 * np.abs(ref).max()


def test_hidden_times_unembedding_gives_logits_and_mask_defaults_to_ones():
  model, params = tiny("gemma2", tie_embeddings=False)
  tokens, _ = _batch(model.config)
  hidden = gkd_jax.score(model, params, tokens, return_hidden=True)
  logits = gkd_jax.score(model, params, tokens, np.ones_like(tokens))
  z = np.asarray(hidden, np.float64) @ np.asarray(unembedding(model, params), np.float64)
  cap = model.config.final_logit_softcap
  np.testing.assert_allclose(np.asarray(logits), cap * np.tanh(z / cap), atol=1e-5)


def test_score_under_jit_with_params_sharded_by_logical_axes():
  model, params = tiny("qwen2")
  mesh, sharded = sharded_2x2x2(model, params)
  tokens, mask = _batch(model.config)
  tokens, mask = np.concatenate([tokens, tokens[:1]]), np.concatenate([mask, mask[:1]])
  data = NamedSharding(mesh, P("data", None))
  fn = jax.jit(
      lambda p, t, m: gkd_jax.score(model, p, t, m),
      out_shardings=NamedSharding(mesh, P("data", None, "tensor")),
  )
  got = fn(sharded, jax.device_put(tokens, data), jax.device_put(mask, data))
  assert got.sharding.spec == P("data", None, "tensor")
  want = gkd_jax.score(model, params, tokens, mask)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_output_from_runs_the_last_layer_only_where_asked():
  """score(output_from=k) equals score()[:, k:] in value and in gradient (every family flavour:
  sliding windows, soft-caps, sandwich norms, q/k norms), with left and right padding."""
  for family in ("llama", "qwen2", "gemma2", "gemma3"):
    model, params = tiny(family)
    tokens, mask = _batch(model.config)
    full = gkd_jax.score(model, params, tokens, mask, return_hidden=True)
    part = gkd_jax.score(model, params, tokens, mask, return_hidden=True, output_from=6)
    assert part.shape == (3, 5, model.config.embed_dim)
    np.testing.assert_allclose(part, full[:, 6:], rtol=1e-5, atol=1e-6, err_msg=family)
    w = jnp.asarray(np.random.default_rng(2).normal(size=part.shape), jnp.float32)

    def loss(p, k):
      h = gkd_jax.score(model, p, tokens, mask, return_hidden=True, output_from=k)
      return jnp.sum(h[:, 6 - k :] * w)

    g_full, g_part = jax.grad(loss)(params, 0), jax.grad(loss)(params, 6)
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_part)):
      # float32 sums in another order: differences of ~1e-5 of the gradient's scale
      np.testing.assert_allclose(
          b, a, rtol=1e-4, atol=2e-5 * float(np.abs(a).max()), err_msg=family
      )
