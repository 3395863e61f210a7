"""The NNX decoder against an independent, dense float64 numpy forward pass (every family flavour),
plus the params/logical-axes contract."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gkd_jax
from gkd_jax import sharding
from gkd_jax.models import SLIDING, build, init, logical_axes, param_shapes, unembedding
from gkd_jax.testing import FAMILIES, TP_FSDP_RULES, sharded_2x2x2, tiny, tiny_config

# --------------------------------------------------------------------------- float64 reference


def ref_inv_freq(cfg, sliding):
  local = sliding and cfg.rope_local_theta is not None
  theta = cfg.rope_local_theta if local else cfg.rope_theta
  d = cfg.head_dim
  freqs = [theta ** (-(2 * j) / d) for j in range(d // 2)]
  s = None if local else cfg.rope_scaling
  if s is not None and s.rope_type == "linear":
    freqs = [f / s.factor for f in freqs]
  elif s is not None and s.rope_type == "llama3":
    old = s.original_max_position_embeddings
    out = []
    for f in freqs:
      wavelen = 2 * math.pi / f
      if wavelen < old / s.high_freq_factor:
        out.append(f)
      elif wavelen > old / s.low_freq_factor:
        out.append(f / s.factor)
      else:
        smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        out.append((1 - smooth) * f / s.factor + smooth * f)
    freqs = out
  return np.array(freqs)


def ref_norm(x, w, cfg):
  y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.norm_eps)
  return y * (1 + w) if cfg.norm_scale_plus_one else y * w


def ref_rope(x_TxNxH, pos_T, freq):
  ang = pos_T[:, None] * freq[None, :]  # T, H/2
  cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
  half = x_TxNxH.shape[-1] // 2
  a, b = x_TxNxH[..., :half], x_TxNxH[..., half:]
  return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def ref_forward(cfg, params, tokens_T, mask_T):
  """(logits [T,V], final-norm hidden [T,D]) of one sequence, float64, loops where clearer."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  valid = np.asarray(mask_T, bool)
  T = len(tokens_T)
  pos = np.maximum(np.cumsum(valid) - 1, 0).astype(np.float64)
  x = p["embed"][np.asarray(tokens_T)]
  if cfg.scale_embeddings:
    x = x * math.sqrt(cfg.embed_dim)
  group = cfg.num_heads // cfg.num_kv_heads
  scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
  for i in range(cfg.num_layers):
    L = p["layers"][i]
    a = L["attn"]
    sliding = cfg.layer_types[i] == SLIDING
    h = ref_norm(x, L["attn_norm"]["scale"], cfg)
    q = np.einsum("td,dnh->tnh", h, a["q"])
    k = np.einsum("td,dnh->tnh", h, a["k"])
    v = np.einsum("td,dnh->tnh", h, a["v"])
    if cfg.qkv_bias:
      q, k, v = q + a["q_bias"], k + a["k_bias"], v + a["v_bias"]
    if cfg.qk_norm:
      q, k = ref_norm(q, a["q_norm"]["scale"], cfg), ref_norm(k, a["k_norm"]["scale"], cfg)
    freq = ref_inv_freq(cfg, sliding)
    q, k = ref_rope(q, pos, freq), ref_rope(k, pos, freq)
    out = np.zeros_like(q)
    for t in range(T):
      for n in range(cfg.num_heads):
        kn = n // group
        logits = np.array([q[t, n] @ k[s, kn] for s in range(T)]) * scale
        if cfg.attn_logit_softcap:
          logits = cfg.attn_logit_softcap * np.tanh(logits / cfg.attn_logit_softcap)
        ok = valid & (np.arange(T) <= t)
        if sliding:
          ok &= (pos[t] - pos) < cfg.sliding_window
        if not ok.any():
          continue  # padding query with nothing to see: output unused
        w = np.where(ok, np.exp(logits - logits[ok].max()), 0.0)
        out[t, n] = (w / w.sum()) @ v[:, kn]
    o = np.einsum("tnh,nhd->td", out, a["o"])
    if cfg.post_attn_norm:
      o = ref_norm(o, L["post_attn_norm"]["scale"], cfg)
    x = x + o
    h = ref_norm(x, L["mlp_norm"]["scale"], cfg)
    g = h @ L["mlp"]["gate"]
    if cfg.activation == "silu":
      g = g / (1 + np.exp(-g))
    else:
      g = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))
    m = (g * (h @ L["mlp"]["up"])) @ L["mlp"]["down"]
    if cfg.post_mlp_norm:
      m = ref_norm(m, L["post_mlp_norm"]["scale"], cfg)
    x = x + m
  x = ref_norm(x, p["final_norm"]["scale"], cfg)
  logits = x @ (p["embed"].T if cfg.tie_embeddings else p["lm_head"])
  if cfg.final_logit_softcap:
    logits = cfg.final_logit_softcap * np.tanh(logits / cfg.final_logit_softcap)
  return logits, x


def _batch(cfg, T=11, seed=1):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, cfg.vocab_size, (3, T)).astype(np.int32)
  mask = np.ones((3, T), np.int32)
  mask[1, :4] = 0  # left padding (sequence still longer than every window)
  mask[2, -3:] = 0  # right padding
  return tokens, mask


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_score_matches_float64_reference(family):
  model, params = tiny(family)
  cfg = model.config
  tokens, mask = _batch(cfg)
  logits = np.asarray(gkd_jax.score(model, params, tokens, mask))
  hidden = np.asarray(gkd_jax.score(model, params, tokens, mask, return_hidden=True))
  assert logits.dtype == np.float32 and logits.shape == tokens.shape + (cfg.vocab_size,)
  assert hidden.shape == tokens.shape + (cfg.embed_dim,)
  for b in range(len(tokens)):
    ref, ref_h = ref_forward(cfg, params, tokens[b], mask[b])
    ok = mask[b] == 1
    assert np.abs(ref[ok]).max() > 0.5  # non-trivial logits
    np.testing.assert_allclose(logits[b][ok], ref[ok], rtol=1e-5, atol=2e-5 * np.abs(ref).max())
    np.testing.assert_allclose(hidden[b][ok], ref_h[ok], rtol=1e-5, atol=2e-5 * np.abs(ref_h).max())


def test_reference_catches_a_wrong_detail():
  """The reference is sensitive to the details it checks (here: the sliding window)."""
  model, params = tiny("gemma2")
  tokens, mask = _batch(model.config)
  logits = np.asarray(gkd_jax.score(model, params, tokens, mask))
  wider = model.config.replace(sliding_window=5)
  ref, _ = ref_forward(wider, params, tokens[0], mask[0])
  assert np.abs(logits[0] - ref).max() > 1e-3


def test_params_contract():
  cfg = tiny_config("gemma2", tie_embeddings=False, qkv_bias=True, qk_norm=True)
  model = build(cfg)
  params = init(model, jax.random.key(0))
  shapes = param_shapes(model)
  axes = logical_axes(model)
  assert jax.tree.structure(params) == jax.tree.structure(shapes) == jax.tree.structure(axes)
  assert sorted(params["layers"]) == list(range(cfg.num_layers))
  for p, s, a in zip(jax.tree.leaves(params), jax.tree.leaves(shapes), jax.tree.leaves(axes)):
    assert p.shape == s.shape and p.dtype == s.dtype == jnp.float32
    assert len(a) == p.ndim
  D, V, H, K, Dh = cfg.embed_dim, cfg.vocab_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  layer = params["layers"][0]
  assert layer["attn"]["q"].shape == (D, H, Dh)
  assert layer["attn"]["k"].shape == (D, K, Dh)
  assert layer["attn"]["o"].shape == (H, Dh, D)
  assert tuple(axes["layers"][1]["mlp"]["down"]) == ("mlp", "embed")
  assert tuple(axes["embed"]) == ("vocab", "embed")
  assert unembedding(model, params).shape == (D, V)
  # Gemma norms are stored zero-centred as in HF; Llama's start at one.
  assert float(jnp.abs(layer["attn_norm"]["scale"]).max()) == 0.0
  llama = build(tiny_config("llama"))
  lp = init(llama, jax.random.key(1))
  assert "lm_head" not in lp and float(lp["final_norm"]["scale"].min()) == 1.0
  np.testing.assert_array_equal(unembedding(llama, lp), lp["embed"].T)
  with pytest.raises(TypeError, match="ModelConfig"):
    build({"model_type": "llama"})


def test_init_draws_every_matrix_and_places_it_where_asked():
  """init = the Decoder's own initialisers: an independent normal(0, 0.02) draw per matrix,
  zero biases, identity norms; with shardings each array is created in place, same values."""
  cfg = tiny_config("qwen2", embed_dim=64, mlp_dim=128, qk_norm=True)
  model = build(cfg)
  params = init(model, jax.random.key(3))
  named = {
      jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)
  }
  drawn = [x for n, x in named.items() if "norm" not in n and "bias" not in n]
  assert len(drawn) == 2 + 7 * cfg.num_layers  # embed, lm_head, q/k/v/o, gate/up/down
  values = np.concatenate([x.ravel() for x in drawn])
  assert abs(values.std() - 0.02) < 0.0005 and abs(values.mean()) < 0.0005
  flat = [x.ravel()[:64] for x in drawn]
  for i in range(len(flat)):  # no two matrices share a draw
    for j in range(i):
      assert not np.allclose(flat[i], flat[j])
  for n, x in named.items():
    if "bias" in n:
      assert np.all(x == 0.0), n
    elif "norm" in n:
      assert np.all(x == 1.0), n
  assert not np.array_equal(named["['embed']"], np.asarray(init(model, jax.random.key(4))["embed"]))
  mesh, _ = sharded_2x2x2(model, params)
  shardings = sharding.tree_shardings(
      mesh, logical_axes(model), TP_FSDP_RULES, shapes=param_shapes(model)
  )
  placed = init(model, jax.random.key(3), shardings=shardings)
  for x, y, sh in zip(jax.tree.leaves(params), jax.tree.leaves(placed), jax.tree.leaves(shardings)):
    assert y.sharding == sh
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
