"""`scan_layers`: the scanned decoder computes what the looped one does, for every family.

Both forms run the same random float32 weights (`testing.random_params`: O(1) activations, norms
away from their identity, nonzero biases): the looped form on the per-layer params, the scanned one
on `stack_layers` of them. Logits, gradients (compared after `unstack_layers`) and samples (tokens
equal, log-probs close, for a fixed rng, through sliding windows the sequence outgrows) must agree
to float32 rounding; shardings keep the stacked `layers` axis whole; HF files stay per-layer.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file

import gkd_jax
from gkd_jax import models, prune, sharding, testing
from gkd_jax.models import FULL, SLIDING

RTOL = 1e-5
TINY_PRESETS = ("tiny_llama", "tiny_gemma2", "tiny_gemma3", "tiny_qwen2", "tiny_qwen3")
RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
)


def _gemma3_5to1():
  """Gemma 3's real 5:1 local:global pattern, 8 layers (the last two local again)."""
  return testing.tiny_config(
      "gemma3", num_layers=8, layer_types=(SLIDING,) * 5 + (FULL,) + (SLIDING,) * 2
  )


def _pair(cfg, seed=0):
  """(looped model, per-layer params, scanned model, stacked params) with shared weights."""
  model = models.build(cfg)
  params = jax.tree.map(jnp.asarray, testing.random_params(model, seed))
  scanned = models.build(cfg, scan_layers=True)
  return model, params, scanned, models.stack_layers(params)


# Every family's tiny preset, the test families' flavours (soft-caps that bite, qkv bias with an
# untied head, QK-norm with one KV head, sliding windows 3-4), tied and untied variants, and
# Gemma 3's 5:1 pattern.
CONFIGS = {
    **{name: (lambda name=name: models.get_preset(name)) for name in TINY_PRESETS},
    **{f"t_{f}": (lambda f=f: testing.tiny_config(f)) for f in testing.FAMILIES},
    "t_qwen2_tied": lambda: testing.tiny_config("qwen2", tie_embeddings=True),
    "t_gemma2_untied": lambda: testing.tiny_config("gemma2", tie_embeddings=False),
    "gemma3_5to1": _gemma3_5to1,
}


def _close(got, want, rtol=RTOL):
  got, want = np.asarray(got), np.asarray(want)
  scale = max(float(np.max(np.abs(want))), 1e-6)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def _tokens(cfg, B=2, T=11, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
  mask = np.ones((B, T), np.int32)
  mask[1, :3] = 0  # one left-padded row
  return tokens, mask


def test_default_is_the_loop_and_the_forms_convert_both_ways():
  cfg = testing.tiny_config("gemma3")
  assert models.build(cfg).scan_layers is False
  model, params, scanned, stacked = _pair(cfg)
  assert models.is_stacked(stacked) and not models.is_stacked(params)
  shapes = models.param_shapes(scanned)
  assert jax.tree.structure(shapes) == jax.tree.structure(stacked)
  for s, x in zip(jax.tree.leaves(shapes), jax.tree.leaves(stacked)):
    assert s.shape == x.shape
  assert {s.shape[0] for s in jax.tree.leaves(shapes["layers"])} == {cfg.num_layers}
  back = models.unstack_layers(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  assert models.params_for(scanned, params)["layers"]["attn"]["q"].shape[0] == 3
  assert models.params_for(model, stacked)["layers"][2]["attn"]["q"].ndim == 3
  assert models.params_for(model, params) is params
  with pytest.raises(ValueError, match="already stacked"):
    models.stack_layers(stacked)
  with pytest.raises(ValueError, match="already per-layer"):
    models.unstack_layers(params)
  # One rng, one model: init draws the per-layer values and stacks them.
  a = models.init(model, jax.random.key(4))
  b = models.init(scanned, jax.random.key(4))
  for x, y in zip(jax.tree.leaves(models.stack_layers(a)), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match(name):
  cfg = CONFIGS[name]()
  model, params, scanned, stacked = _pair(cfg, seed=len(name))
  tokens, mask = _tokens(cfg)
  for output_from in (0, 6):
    want = gkd_jax.score(model, params, tokens, mask, output_from=output_from)
    got = gkd_jax.score(scanned, stacked, tokens, mask, output_from=output_from)
    assert got.shape == want.shape
    _close(got, want)
  hidden = gkd_jax.score(scanned, stacked, tokens, mask, return_hidden=True)
  _close(hidden, gkd_jax.score(model, params, tokens, mask, return_hidden=True))


def test_pruned_irregular_pattern_matches():
  """keep_layers leaves an irregular local/global order (S,S,F,S,F...): the per-layer kind rides
  as scanned data, and pruning stacked params gives the stacked form of the pruned per-layer one."""
  cfg = _gemma3_5to1()
  model, params, scanned, stacked = _pair(cfg, seed=5)
  keep = [0, 3, 5, 6]
  small, small_params = prune.keep_layers(model, params, keep)
  small_scanned, small_stacked = prune.keep_layers(scanned, stacked, keep)
  assert small_scanned.scan_layers and small.config == small_scanned.config
  assert small.config.layer_types == (SLIDING, SLIDING, FULL, SLIDING)
  for a, b in zip(
      jax.tree.leaves(models.stack_layers(small_params)), jax.tree.leaves(small_stacked)
  ):
    np.testing.assert_array_equal(a, b)
  tokens, mask = _tokens(cfg)
  _close(
      gkd_jax.score(small_scanned, small_stacked, tokens, mask, output_from=4),
      gkd_jax.score(small, small_params, tokens, mask, output_from=4),
  )
  # Block importance of a scanned model is the looped form's.
  np.testing.assert_allclose(
      prune.block_importance(scanned, stacked, tokens, mask),
      prune.block_importance(model, params, tokens, mask),
      rtol=1e-6,
  )


def _loss(model, params, tokens, mask, weights, remat, output_from):
  logits = gkd_jax.score(model, params, tokens, mask, remat=remat, output_from=output_from)
  return jnp.sum(logits * weights[:, output_from:])


@pytest.mark.parametrize("name", ["tiny_gemma2", "t_gemma2", "t_qwen2", "t_qwen3", "gemma3_5to1"])
def test_gradients_match_with_and_without_remat(name):
  cfg = CONFIGS[name]()
  model, params, scanned, stacked = _pair(cfg, seed=2)
  tokens, mask = _tokens(cfg)
  weights = jax.random.normal(jax.random.key(1), tokens.shape + (cfg.vocab_size,))
  grad = jax.jit(jax.grad(_loss, argnums=1), static_argnums=(0, 5, 6))
  want = grad(model, params, tokens, mask, weights, False, 4)
  for remat in (False, True):
    got = models.unstack_layers(grad(scanned, stacked, tokens, mask, weights, remat, 4))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
      assert float(jnp.max(jnp.abs(w))) > 0, path  # every weight gets a gradient
      _close(g, w, rtol=2e-5)


def _prompts(cfg, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, cfg.vocab_size, (3, 7)).astype(np.int32)
  mask = np.ones((3, 7), np.int32)
  mask[1, :4] = 0  # left padding
  mask[2, 5:] = 0  # right padding (sample left-aligns it)
  return tokens, mask


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("t_gemma2", dict(temperature=0.0)),
        ("t_gemma2", dict(temperature=1.0)),
        ("t_gemma3", dict(temperature=0.8, top_k=10, top_p=0.9)),
        ("gemma3_5to1", dict(temperature=1.0)),
        ("t_qwen3", dict(temperature=1.0)),
        ("t_llama", dict(temperature=0.0)),
        ("tiny_gemma2", dict(temperature=1.0)),
    ],
)
def test_samples_match(name, kwargs):
  """Prompt 7 + 10 new tokens outgrow the 3-4 token windows of the test families: the looped
  sampler's ring buffers wrap, the scanned one masks a full-length cache."""
  cfg = CONFIGS[name]()
  model, params, scanned, stacked = _pair(cfg, seed=3)
  tokens, mask = _prompts(cfg)
  run = lambda m, p: gkd_jax.sample(  # noqa: E731
      m,
      p,
      tokens,
      mask,
      jax.random.key(7),
      max_new_tokens=10,
      eos_id=None,
      return_logits=True,
      **kwargs,
  )
  (want, want_logits), (got, got_logits) = run(model, params), run(scanned, stacked)
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_array_equal(got.mask, want.mask)
  _close(got.logprobs, want.logprobs)
  _close(got_logits, want_logits)


@pytest.mark.parametrize("shape", [(1, 4, 2), (2, 2, 2)])
def test_stacked_shardings_keep_the_layers_axis_whole(shape):
  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)), jax.devices()[:8])
  cfg = testing.tiny_config("gemma2", tie_embeddings=False, qk_norm=True, qkv_bias=True)
  model, params, scanned, stacked = _pair(cfg, seed=9)
  looped_sh = sharding.tree_shardings(
      mesh, models.logical_axes(model), RULES, models.param_shapes(model)
  )
  axes = models.logical_axes(scanned)
  assert all(
      tuple(spec)[0] == "layers"
      for spec in jax.tree.leaves(axes["layers"], is_leaf=lambda x: isinstance(x, P))
  )
  stacked_sh = sharding.tree_shardings(mesh, axes, RULES, models.param_shapes(scanned))
  for name in ("embed", "lm_head", "final_norm"):
    assert stacked_sh[name] == looped_sh[name]
  layer0 = looped_sh["layers"][0]
  for s, s0 in zip(jax.tree.leaves(stacked_sh["layers"]), jax.tree.leaves(layer0)):
    assert s.spec[0] is None  # the layers axis is replicated
    assert tuple(s.spec)[1:] == tuple(s0.spec) + (None,) * (len(s.spec) - 1 - len(s0.spec))
  assert any(s.spec[1:] != (None,) * (len(s.spec) - 1) for s in jax.tree.leaves(stacked_sh))
  # Created in place with those shardings, same values; sharded scoring under jit agrees.
  placed = models.init(scanned, jax.random.key(0), stacked_sh)
  for x, s in zip(jax.tree.leaves(placed), jax.tree.leaves(stacked_sh)):
    assert x.sharding == s
  on_mesh = jax.device_put(stacked, stacked_sh)
  tokens, mask = _tokens(cfg, B=8)
  _close(gkd_jax.score(scanned, on_mesh, tokens, mask), gkd_jax.score(model, params, tokens, mask))


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_load_scanned_then_save_round_trips_the_per_layer_files(name, tmp_path):
  cfg = models.get_preset(name)
  model = models.build(cfg)
  params = testing.normal_params(model, seed=len(name))
  gkd_jax.save_pretrained(tmp_path / "a", model, params)
  scanned, stacked = gkd_jax.load_pretrained(tmp_path / "a", scan_layers=True)
  assert scanned.scan_layers and scanned.config == cfg
  for x, y in zip(jax.tree.leaves(models.stack_layers(params)), jax.tree.leaves(stacked)):
    np.testing.assert_array_equal(x, y)
  gkd_jax.save_pretrained(tmp_path / "b", scanned, stacked)
  assert sorted(os.listdir(tmp_path / "b")) == sorted(os.listdir(tmp_path / "a"))
  for f in ("config.json", "generation_config.json"):
    assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text()
  a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(
      tmp_path / "b" / "model.safetensors"
  )
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_load_scanned_places_stacked_leaves_as_asked(tmp_path):
  """Stacked-form shardings (a tree, or a callable on stacked paths) place the stacked leaves."""
  mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2}, jax.devices()[:8])
  cfg = models.get_preset("tiny_qwen3")
  plain = testing.normal_params(models.build(cfg), seed=1)
  path = tmp_path / "ckpt"
  gkd_jax.save_pretrained(path, models.build(cfg), plain)
  scanned = models.build(cfg, scan_layers=True)
  tree = sharding.tree_shardings(
      mesh, models.logical_axes(scanned), RULES, models.param_shapes(scanned)
  )
  seen = []

  def by_path(p, sds):
    seen.append(p)
    assert sds.shape == _lookup(models.param_shapes(scanned), p).shape
    return _lookup(tree, p)

  for shardings in (tree, by_path):
    model, params = gkd_jax.load_pretrained(path, shardings=shardings, scan_layers=True)
    assert model.scan_layers
    for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(tree)):
      assert x.sharding == s
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(models.stack_layers(plain))):
      np.testing.assert_array_equal(x, y)
  assert ("layers", "attn", "q") in seen


def _lookup(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def test_scanned_score_and_grad_compile_for_a_4_chip_tpu():
  """A tiny Gemma 2 (sliding + global, soft-caps) in bf16, FSDP x tensor over v5p:2x2x1: the
  scanned forward + backward with remat lowers and compiles with XLA:TPU as one while loop."""
  from tpu_helpers import tpu_devices  # pylint: disable=import-outside-toplevel

  devices = tpu_devices("v5p:2x2x1")
  mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, devices)
  model = models.build(models.get_preset("tiny_gemma2"), jnp.bfloat16, scan_layers=True)
  shapes = models.param_shapes(model)
  shardings = sharding.tree_shardings(mesh, models.logical_axes(model), RULES, shapes)
  params = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
  )
  batch = sharding.batch_sharding(mesh, RULES, 2)
  tokens = jax.ShapeDtypeStruct((8, 64), jnp.int32, sharding=batch)

  def loss(params, tokens):
    logits = gkd_jax.score(model, params, tokens, remat=True, output_from=16)
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1))

  compiled = jax.jit(jax.value_and_grad(loss)).lower(params, tokens).compile()
  assert "while" in compiled.as_text()
