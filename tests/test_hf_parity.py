"""Parity with transformers (the reference implementation) on committed fixtures.

tests/fixtures/hf/<family>/ holds a tiny random checkpoint saved by transformers together with
logits and a greedy continuation computed by transformers (tests/fixtures/make_hf_fixtures.py; no
torch here). Each family is loaded from its own config.json (transformers 5.x dialect) and from
the same config rewritten in the 4.x dialect; both must reproduce transformers' outputs:
float32 logits (and final-norm hidden states) within 1e-4 at every unpadded position (full,
left-padded and right-padded rows) through `gkd_jax.score`, and the identical greedy continuation
through `gkd_jax.sample` (prefill + KV-cache decode, prompts left-padded, decode running past the
sliding window).
"""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gkd_jax
from gkd_jax.models.hf_config import config_from_hf

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
FAMILIES = ("gemma2", "gemma3_text", "llama", "qwen2", "qwen3")
TOL = 1e-4


def _folder(family: str, dialect: str, tmp_path) -> str:
  src = os.path.join(FIXTURES, family)
  if dialect == "v5":
    return src
  dst = tmp_path / family  # same weights, config.json in the 4.x dialect
  dst.mkdir()
  os.symlink(os.path.join(src, "model.safetensors"), dst / "model.safetensors")
  shutil.copy(os.path.join(src, "config.v4.json"), dst / "config.json")
  return str(dst)


@pytest.fixture(scope="module")
def loaded():
  """(model, params, expected) per (family, dialect), loaded once for the module."""
  cache = {}

  def get(family, dialect, tmp_path):
    if (family, dialect) not in cache:
      model, params = gkd_jax.load_pretrained(_folder(family, dialect, tmp_path))
      cache[family, dialect] = (
          model,
          params,
          dict(np.load(os.path.join(FIXTURES, family, "expected.npz"))),
      )
    return cache[family, dialect]

  return get


@pytest.mark.parametrize("family", FAMILIES)
def test_dialects_parse_to_the_same_config(family):
  import json

  with open(os.path.join(FIXTURES, family, "config.json")) as f:
    v5 = json.load(f)
  with open(os.path.join(FIXTURES, family, "config.v4.json")) as f:
    v4 = json.load(f)
  assert "rope_parameters" in v5 and "rope_theta" not in v5
  assert ("layer_types" in v5) == (family != "llama")  # transformers' Llama has no layer_types
  assert "rope_parameters" not in v4 and "layer_types" not in v4 and "rope_theta" in v4
  assert config_from_hf(v5) == config_from_hf(v4)


@pytest.mark.parametrize("dialect", ["v5", "v4"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(family, dialect, loaded, tmp_path):
  model, params, exp = loaded(family, dialect, tmp_path)
  logits = np.asarray(
      gkd_jax.score(model, params, jnp.asarray(exp["tokens"]), jnp.asarray(exp["mask"]))
  )
  assert logits.dtype == np.float32 and logits.shape == exp["logits"].shape
  valid = exp["mask"].astype(bool)
  assert not valid.all() and valid[0].all()  # padded rows are really exercised
  err = np.abs(logits[valid] - exp["logits"][valid]).max()
  assert err <= TOL, f"{family} ({dialect}): max |dlogit| {err:.2e}"


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_match_transformers(family, loaded, tmp_path):
  """return_hidden=True gives transformers' final-norm hidden states; unembedding maps them to
  the logits (the path the fused divergence kernel takes)."""
  model, params, exp = loaded(family, "v5", tmp_path)
  hidden = gkd_jax.score(
      model, params, jnp.asarray(exp["tokens"]), jnp.asarray(exp["mask"]), return_hidden=True
  )
  valid = exp["mask"].astype(bool)
  np.testing.assert_allclose(np.asarray(hidden)[valid], exp["hidden"][valid], atol=TOL, rtol=0)
  logits = jnp.einsum("btd,dv->btv", hidden, gkd_jax.models.unembedding(model, params))
  cap = model.config.final_logit_softcap
  if cap:
    logits = cap * jnp.tanh(logits / cap)
  np.testing.assert_allclose(np.asarray(logits)[valid], exp["logits"][valid], atol=TOL, rtol=0)


@pytest.mark.parametrize("dialect", ["v5", "v4"])
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_continuation_matches_transformers(family, dialect, loaded, tmp_path):
  model, params, exp = loaded(family, dialect, tmp_path)
  want = exp["greedy_tokens"]
  out = gkd_jax.sample(
      model,
      params,
      jnp.asarray(exp["prompt_tokens"]),
      jnp.asarray(exp["prompt_mask"]),
      jax.random.key(0),
      max_new_tokens=want.shape[1],
      temperature=0.0,
      eos_id=(),
  )
  assert want.shape[1] >= 16
  prompt_len = exp["prompt_tokens"].shape[1]
  window = model.config.sliding_window
  if window:  # the decode must run past the sliding window for the cache to be tested
    assert prompt_len + want.shape[1] > 2 * window
  np.testing.assert_array_equal(
      np.asarray(out.tokens), want, err_msg=f"{family} ({dialect}) greedy continuation differs"
  )
  assert np.asarray(out.mask).all()
