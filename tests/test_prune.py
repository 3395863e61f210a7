"""Layer pruning: keep_layers re-indexes weights and types (checked against models whose dropped
layers are exact identities), block importance against an independent float64 reference built from
`score`, choose_layers' rules and Gemma's global layers, bad inputs."""

import jax
import numpy as np
import pytest

import gkd_jax
from gkd_jax import models
from gkd_jax.models import FULL, SLIDING
from gkd_jax.prune import block_importance, choose_layers, keep_layers, must_keep, prune
from gkd_jax.testing import tiny, tiny_config

# Gemma 3's 5 sliding : 1 global pattern, with the global layer in the middle (not last) so that
# "keeps every global layer" and "keeps the last layer" are separate claims.
GEMMA3_MIDDLE = (SLIDING, SLIDING, FULL, SLIDING, SLIDING, SLIDING)


def _batch(vocab_size, B=3, T=9, seed=1):
  """Tokens and a mask with left padding on row 1 and right padding on row 2 (T > the tiny
  models' sliding windows, so sliding and global layers differ)."""
  rng = np.random.default_rng(seed)
  tokens_BxT = rng.integers(0, vocab_size, (B, T)).astype(np.int32)
  mask_BxT = np.ones((B, T), np.int32)
  mask_BxT[1, :3] = 0
  mask_BxT[2, -2:] = 0
  return tokens_BxT, mask_BxT


def _make_identity(params, layers):
  """params whose `layers` are exact identities: zero attention output and MLP down projections
  (Gemma's post-norms of a zero vector are zero too), so x + 0 + 0 = x."""
  new = dict(params, layers=dict(params["layers"]))
  for i in layers:
    layer = new["layers"][i]
    attn = dict(layer["attn"], o=np.zeros_like(layer["attn"]["o"]))
    mlp = dict(layer["mlp"], down=np.zeros_like(layer["mlp"]["down"]))
    new["layers"][i] = dict(layer, attn=attn, mlp=mlp)
  return new


def _valid_logits(model, params, tokens_BxT, mask_BxT):
  logits = np.asarray(gkd_jax.score(model, params, tokens_BxT, mask_BxT))
  return logits[mask_BxT.astype(bool)]


def test_keep_layers_keeps_exactly_the_chosen_weights_and_types():
  model, params = tiny("gemma3", num_layers=6, layer_types=GEMMA3_MIDDLE)
  keep = [0, 2, 3, 5]
  pruned, pruned_params = keep_layers(model, params, keep)
  assert pruned.config == model.config.replace(
      num_layers=4, layer_types=(SLIDING, FULL, SLIDING, SLIDING)
  )
  assert pruned.dtype == model.dtype
  assert sorted(pruned_params["layers"]) == [0, 1, 2, 3]
  shapes = models.param_shapes(pruned)
  assert jax.tree.structure(shapes) == jax.tree.structure(pruned_params)
  for new, old in enumerate(keep):
    got, want = pruned_params["layers"][new], params["layers"][old]
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for name in ("embed", "final_norm"):
    for a, b in zip(jax.tree.leaves(pruned_params[name]), jax.tree.leaves(params[name])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert len(params["layers"]) == 6  # the input is left alone


def test_pruning_to_every_layer_gives_identical_logits():
  model, params = tiny("qwen2", num_layers=3)
  tokens_BxT, mask_BxT = _batch(model.config.vocab_size)
  pruned, pruned_params, info = prune(model, params, 3, "even")
  assert info == dict(kept=[0, 1, 2], importance=None, rule="even")
  assert pruned == model
  np.testing.assert_array_equal(
      _valid_logits(pruned, pruned_params, tokens_BxT, mask_BxT),
      _valid_logits(model, params, tokens_BxT, mask_BxT),
  )


@pytest.mark.parametrize(
    "family, overrides, keep",
    [
        ("llama", dict(num_layers=3), [0, 2]),
        # Drops the first layer and the last (global) one, so the kept global and sliding layers
        # trade slots: right only if each layer's type (rope base and scaling, sliding mask)
        # travels with it.
        ("gemma3", dict(num_layers=4, layer_types=(SLIDING, FULL, SLIDING, FULL)), [1, 2]),
    ],
)
def test_dropping_identity_layers_changes_no_logit(family, overrides, keep):
  model, params = tiny(family, **overrides)
  dropped = [i for i in range(model.config.num_layers) if i not in keep]
  params = _make_identity(params, dropped)
  tokens_BxT, mask_BxT = _batch(model.config.vocab_size)
  pruned, pruned_params = keep_layers(model, params, keep)
  np.testing.assert_allclose(
      _valid_logits(pruned, pruned_params, tokens_BxT, mask_BxT),
      _valid_logits(model, params, tokens_BxT, mask_BxT),
      rtol=1e-5,
      atol=1e-5,
  )


def _reference_importance(model, params, tokens_BxT, mask_BxT):
  """BI in float64 from `score`, the decoder's own forward (one compiled program for all layers):
  x_i is the final hidden state of the model whose layers i.. are made identities, with the final
  norm's scale at its identity, so score gives x_i / rms(x_i) per token, and cosine similarity
  ignores a positive per-token factor."""
  cfg = model.config
  identity = np.zeros if cfg.norm_scale_plus_one else np.ones
  params = dict(params, final_norm=dict(scale=identity(cfg.embed_dim, np.float32)))
  valid = mask_BxT.astype(bool)
  streams = []
  for i in range(cfg.num_layers + 1):
    first_i = _make_identity(params, range(i, cfg.num_layers))
    hidden = gkd_jax.score(model, first_i, tokens_BxT, mask_BxT, return_hidden=True)
    streams.append(np.asarray(hidden, np.float64)[valid])
  bi = []
  for x, y in zip(streams[:-1], streams[1:]):
    cos = np.sum(x * y, -1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
    bi.append(1.0 - cos.mean())
  return np.array(bi)


def test_block_importance_matches_a_reference_from_score_and_is_zero_for_an_identity():
  model, params = tiny("gemma3", num_layers=4, layer_types=(SLIDING, FULL, SLIDING, SLIDING))
  params = _make_identity(params, [2])
  tokens_BxT, mask_BxT = _batch(model.config.vocab_size)
  got = block_importance(model, params, tokens_BxT, mask_BxT)
  want = _reference_importance(model, params, tokens_BxT, mask_BxT)
  assert got.shape == (4,) and got.dtype == np.float64
  np.testing.assert_allclose(got, want, atol=2e-6)
  assert abs(got[2]) < 1e-6
  assert np.all(np.delete(got, 2) > 1e-3)
  # Padded positions take no part; scoring the rows two at a time (the last pair padded with an
  # empty row) pools the same tokens.
  tokens_junk = np.where(mask_BxT.astype(bool), tokens_BxT, 7)
  np.testing.assert_allclose(
      block_importance(model, params, tokens_junk, mask_BxT, batch_size=2), got, atol=1e-6
  )


def test_importance_pruning_drops_identity_layers_and_keeps_the_logits():
  model, params = tiny("llama", num_layers=4)
  params = _make_identity(params, [2])
  tokens_BxT, mask_BxT = _batch(model.config.vocab_size)
  pruned, pruned_params, info = prune(model, params, 3, calibration=(tokens_BxT, mask_BxT))
  assert info["kept"] == [0, 1, 3] and info["rule"] == "importance"
  assert len(info["importance"]) == 4
  assert pruned.config.num_layers == 3
  np.testing.assert_allclose(
      _valid_logits(pruned, pruned_params, tokens_BxT, mask_BxT),
      _valid_logits(model, params, tokens_BxT, mask_BxT),
      rtol=1e-5,
      atol=1e-5,
  )


@pytest.mark.parametrize("layer_types", [(SLIDING,) * 5 + (FULL,), GEMMA3_MIDDLE])
def test_choose_layers_keeps_every_global_layer_and_the_first_and_last(layer_types):
  model = models.build(tiny_config("gemma3", num_layers=6, layer_types=layer_types))
  forced = must_keep(model)
  globals_ = [i for i, t in enumerate(layer_types) if t == FULL]
  assert forced == sorted({0, 5, *globals_})
  # Globals least important: importance alone would drop them.
  importance = np.array([0.5 if t == SLIDING else 0.0 for t in layer_types]) + np.arange(6) / 100
  for num_keep in range(len(forced), 7):
    for rule in ("importance", "even"):
      kept = choose_layers(model, num_keep, rule, importance)
      assert len(kept) == num_keep and kept == sorted(set(kept))
      assert set(forced) <= set(kept)
    kept = choose_layers(model, num_keep, "importance", importance)
    free = [i for i in range(6) if i not in forced]
    # The budget goes to the most important free layers (here the deepest).
    assert [i for i in kept if i not in forced] == free[len(free) - (num_keep - len(forced)) :]


def test_even_rule_spreads_the_budget_over_the_gaps_between_global_layers():
  model = models.build(tiny_config("gemma3", num_layers=6, layer_types=GEMMA3_MIDDLE))
  # Forced [0, 2, 5]: one free layer in the first gap, two in the second.
  assert choose_layers(model, 4, "even") == [0, 2, 4, 5]
  assert choose_layers(model, 5, "even") == [0, 1, 2, 4, 5]
  assert choose_layers(model, 6, "even") == list(range(6))


def test_choose_layers_rules_on_one_layer_type():
  model = models.build(tiny_config("llama", num_layers=12))
  assert must_keep(model) == [0, 11]
  assert choose_layers(model, 6, "even") == [0, 2, 4, 7, 9, 11]
  assert choose_layers(model, 2, "even") == [0, 11]
  assert choose_layers(model, 12, "even") == list(range(12))
  for num_keep in range(2, 13):  # round(linspace): gaps differ by at most one layer
    kept = choose_layers(model, num_keep, "even")
    assert kept == np.floor(np.linspace(0, 11, num_keep) + 0.5).astype(int).tolist()
    assert np.ptp(np.diff(kept)) <= 1
  importance = np.array([0.0, 0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.3, 0.4, 0.5, 0.6, 0.0])
  # First and last stay although least important; the tie at 0.3 goes to the shallower layer.
  assert choose_layers(model, 4, "importance", importance) == [0, 1, 3, 11]
  assert choose_layers(model, 9, "importance", importance) == [0, 1, 3, 5, 6, 8, 9, 10, 11]


@pytest.mark.parametrize(
    "keep, message",
    [
        ([], "keeps no layer"),
        ([0, 0, 1], r"repeats indices \[0\]"),
        ([2, 1], "not sorted"),
        ([0, 3], r"indices \[3\] outside \[0, 3\)"),
        ([-1, 0], r"indices \[-1\] outside"),
        ([0.0, 1], "non-integer"),
    ],
)
def test_keep_layers_rejects_bad_indices(keep, message):
  model, params = tiny("llama", num_layers=3)
  with pytest.raises(ValueError, match=message):
    keep_layers(model, params, keep)


def test_choose_layers_and_prune_reject_bad_requests():
  gemma = models.build(tiny_config("gemma3", num_layers=6, layer_types=GEMMA3_MIDDLE))
  with pytest.raises(ValueError, match=r"num_keep=2 must be in \[3, 6\]"):
    choose_layers(gemma, 2, "even")
  with pytest.raises(ValueError, match=r"num_keep=7 must be in \[3, 6\]"):
    choose_layers(gemma, 7, "even")
  with pytest.raises(ValueError, match="rule='depth' must be one of"):
    choose_layers(gemma, 4, "depth")
  with pytest.raises(ValueError, match="needs importance"):
    choose_layers(gemma, 4, "importance")
  with pytest.raises(ValueError, match=r"importance has shape \(5,\), need \(6,\)"):
    choose_layers(gemma, 4, "importance", np.zeros(5))
  model, params = tiny("llama", num_layers=3)
  with pytest.raises(ValueError, match="needs calibration"):
    prune(model, params, 2)
  with pytest.raises(ValueError, match="no valid token"):
    block_importance(model, params, np.zeros((1, 4), np.int32), np.zeros((1, 4), np.int32))
  with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
    block_importance(model, params, np.zeros((1, 4), np.int32), batch_size=0)
  with pytest.raises(ValueError, match=r"tokens \(1, 4\) and mask \(1, 3\)"):
    block_importance(model, params, np.zeros((1, 4), np.int32), np.ones((1, 3), np.int32))
