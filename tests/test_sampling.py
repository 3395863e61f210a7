"""sample(): KV-cache decoding against full-sequence `score`, sampling statistics, top-k/top-p sets,
EOS masking, mixed prompt lengths and use under jit with sharded params."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import gkd_jax
from gkd_jax.models import build
from gkd_jax.testing import sharded_2x2x2, tiny


def _prompts(vocab, lengths, P, seed=0, side="left"):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (len(lengths), P)).astype(np.int32)
  mask = np.zeros((len(lengths), P), np.int32)
  for b, n in enumerate(lengths):
    if side == "left":
      mask[b, P - n :] = 1
    else:
      mask[b, :n] = 1
  return tokens, mask


def _concat_left_aligned(prompt, pmask, gen):
  """[valid prompt tokens..., generated] left-padded to one width, with its mask."""
  rows, masks = [], []
  width = prompt.shape[1] + gen.shape[1]
  for p, m, g in zip(prompt, pmask, gen):
    seq = np.concatenate([p[m == 1], g])
    rows.append(np.concatenate([np.zeros(width - len(seq), np.int32), seq]))
    masks.append(np.concatenate([np.zeros(width - len(seq), np.int32), np.ones(len(seq))]))
  return np.stack(rows).astype(np.int32), np.stack(masks).astype(np.int32)


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "qwen2"])
def test_kv_cache_decode_logits_equal_score_at_every_step(family):
  """Greedy decode through sliding windows (prompt 9 > window 3/4, 12 new tokens: the ring buffers
  wrap several times) with full, left-padded and right-padded prompts in one batch."""
  model, params = tiny(family)
  V, N = model.config.vocab_size, 12
  prompt, pmask = _prompts(V, [9, 6, 9], 9)
  pmask[2] = np.r_[np.ones(5), np.zeros(4)]  # one right-padded row (sample left-aligns it)
  out, logits = gkd_jax.sample(
      model,
      params,
      prompt,
      pmask,
      jax.random.key(0),
      max_new_tokens=N,
      temperature=0.0,
      eos_id=None,
      return_logits=True,
  )
  gen = np.asarray(out.tokens)
  assert (np.asarray(out.mask) == 1).all()
  seq, smask = _concat_left_aligned(prompt, pmask, gen)
  ref = np.asarray(gkd_jax.score(model, params, seq, smask))[:, -N - 1 : -1]  # predicts gen[:, i]
  np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=1e-4)
  chosen = np.take_along_axis(ref, gen[..., None], -1)[..., 0]
  assert (chosen >= ref.max(-1) - 1e-4).all()  # greedy (up to float ties)
  assert (gen == ref.argmax(-1)).mean() > 0.9
  ref_lp = jax.nn.log_softmax(ref).max(-1)
  np.testing.assert_allclose(np.asarray(out.logprobs), ref_lp, atol=1e-4)


def test_mixed_prompt_lengths_give_the_same_greedy_output_as_each_prompt_alone():
  model, params = tiny("gemma2")
  lengths = [9, 3]
  prompt, pmask = _prompts(model.config.vocab_size, lengths, 9, seed=3)
  batch = gkd_jax.sample(
      model, params, prompt, pmask, jax.random.key(1), max_new_tokens=10, temperature=0.0
  )
  for b, n in enumerate(lengths):
    alone = gkd_jax.sample(
        model,
        params,
        prompt[b : b + 1, 9 - n :],
        pmask[b : b + 1, 9 - n :],
        jax.random.key(1),
        max_new_tokens=10,
        temperature=0.0,
    )
    np.testing.assert_array_equal(np.asarray(batch.tokens[b]), np.asarray(alone.tokens[0]))


def _first_token_draws(model, params, n, temperature, **kw):
  prompt, pmask = _prompts(model.config.vocab_size, [5], 5, seed=7)
  logits = np.asarray(gkd_jax.score(model, params, prompt, pmask))[0, -1].astype(np.float64)
  out = gkd_jax.sample(
      model,
      params,
      np.repeat(prompt, n, 0),
      np.repeat(pmask, n, 0),
      jax.random.key(42),
      max_new_tokens=1,
      temperature=temperature,
      **kw,
  )
  return logits, np.asarray(out.tokens[:, 0]), np.asarray(out.logprobs[:, 0])


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def _chi2_pvalue(draws, probs):
  counts = np.bincount(draws, minlength=len(probs)).astype(np.float64)
  expected = probs * len(draws)
  big = expected >= 5  # pool the rare tokens into one bin
  obs = np.r_[counts[big], counts[~big].sum()]
  exp = np.r_[expected[big], expected[~big].sum()]
  if exp[-1] == 0:
    obs, exp = obs[:-1], exp[:-1]
  return stats.chisquare(obs, exp).pvalue


def test_first_token_distribution_matches_softmax_of_tempered_score_logits():
  model, params = tiny("gemma2", seed=5, final_logit_softcap=4.0)
  tau = 0.7
  logits, draws, lps = _first_token_draws(model, params, 20000, tau)
  probs = _softmax(logits / tau)
  assert (probs > 0.01).sum() >= 10 and probs.min() < 0.1 * probs.max()  # non-degenerate
  assert _chi2_pvalue(draws, probs) > 1e-3
  # The test has power: the untempered distribution is rejected by the same draws.
  assert _chi2_pvalue(draws, _softmax(logits)) < 1e-6
  np.testing.assert_allclose(lps, np.log(probs[draws]), atol=1e-4)


@pytest.mark.parametrize("top_k, top_p", [(5, 1.0), (0, 0.6), (8, 0.7)])
def test_top_k_top_p_draw_only_from_the_allowed_set_with_renormalised_probs(top_k, top_p):
  model, params = tiny("gemma2", seed=5, final_logit_softcap=4.0)
  tau = 0.9
  logits, draws, lps = _first_token_draws(model, params, 20000, tau, top_k=top_k, top_p=top_p)
  z = logits / tau
  order = np.argsort(-z)
  allowed = order[:top_k] if top_k else order
  p = _softmax(z[allowed])
  keep = (np.cumsum(p) - p) < top_p  # smallest prefix with mass >= top_p
  allowed = allowed[keep]
  assert 1 < len(allowed) < len(z)
  assert np.isin(draws, allowed).all()
  probs = np.zeros_like(z)
  probs[allowed] = _softmax(z[allowed])
  assert _chi2_pvalue(draws, probs) > 1e-3
  np.testing.assert_allclose(lps, np.log(probs[draws]), atol=1e-4)


def test_top_k_every_step_stays_in_the_step_top_k():
  model, params = tiny("gemma3", seed=2)
  prompt, pmask = _prompts(model.config.vocab_size, [6, 3] * 64, 6, seed=2)
  out, logits = gkd_jax.sample(
      model,
      params,
      prompt,
      pmask,
      jax.random.key(3),
      max_new_tokens=6,
      temperature=1.5,
      top_k=3,
      top_p=0.95,
      eos_id=None,
      return_logits=True,
  )
  top3 = np.argsort(-np.asarray(logits), axis=-1)[..., :3]
  assert (top3 == np.asarray(out.tokens)[..., None]).any(-1).all()


def test_nothing_after_eos_is_unmasked_and_prefix_is_unchanged():
  model, params = tiny("gemma2", seed=1)
  V, N = model.config.vocab_size, 12
  prompt, pmask = _prompts(V, [7, 3, 5, 1] * 16, 7, seed=4)
  rng = jax.random.key(9)
  free = gkd_jax.sample(model, params, prompt, pmask, rng, max_new_tokens=N, eos_id=None)
  toks = np.asarray(free.tokens)
  eos = tuple(int(t) for t in np.bincount(toks[:, 2:].ravel(), minlength=V).argsort()[-2:])
  out = gkd_jax.sample(model, params, prompt, pmask, rng, max_new_tokens=N, eos_id=eos)
  got, mask, lp = (np.asarray(a) for a in out)
  n_ended = 0
  for b in range(len(toks)):
    hits = np.flatnonzero(np.isin(toks[b], eos))
    end = hits[0] + 1 if len(hits) else N  # tokens kept, EOS included
    n_ended += end < N
    np.testing.assert_array_equal(mask[b], np.arange(N) < end)
    np.testing.assert_array_equal(got[b, :end], toks[b, :end])
    assert (got[b, end:] == model.config.pad_id).all() and (lp[b, end:] == 0).all()
    np.testing.assert_allclose(lp[b, :end], np.asarray(free.logprobs)[b, :end], atol=1e-5)
  assert 0 < n_ended < len(toks)  # both kinds of rows occur


def test_decode_loop_stops_once_every_row_has_finished():
  model, params = tiny("qwen3")
  V = model.config.vocab_size
  prompt, pmask = _prompts(V, [4, 2], 4)
  out, logits = gkd_jax.sample(
      model,
      params,
      prompt,
      pmask,
      jax.random.key(0),
      max_new_tokens=8,
      eos_id=list(range(V)),
      return_logits=True,
  )
  np.testing.assert_array_equal(np.asarray(out.mask), [[1] + [0] * 7] * 2)
  assert np.abs(np.asarray(logits)[:, 1:]).max() == 0  # no decode step ran
  # Another temperature, rng and prompt of the same shape reuse the compiled program.
  from gkd_jax.sampling import _sample

  compiled = _sample._cache_size()
  gkd_jax.sample(
      model,
      params,
      prompt[::-1],
      pmask[::-1],
      jax.random.key(5),
      max_new_tokens=8,
      temperature=0.3,
      eos_id=list(range(V)),
      return_logits=True,
  )
  assert _sample._cache_size() == compiled


def test_bad_arguments_raise():
  model, params = tiny("qwen3")
  prompt, pmask = _prompts(model.config.vocab_size, [4], 4)
  for kw, field in [
      (dict(max_new_tokens=0), "max_new_tokens"),
      (dict(max_new_tokens=2, top_p=0.0), "top_p"),
      (dict(max_new_tokens=2, top_k=-1), "top_k"),
      (dict(max_new_tokens=2, temperature=-1.0), "temperature"),
  ]:
    with pytest.raises(ValueError, match=field):
      gkd_jax.sample(model, params, prompt, pmask, jax.random.key(0), **kw)


def test_sample_under_jit_with_params_sharded_by_logical_axes():
  from jax.sharding import NamedSharding, PartitionSpec as P

  model, params = tiny("gemma2")
  mesh, sharded = sharded_2x2x2(model, params)
  assert len(sharded["layers"][0]["attn"]["q"].sharding.device_set) == 8
  prompt, pmask = _prompts(model.config.vocab_size, [7, 3, 5, 2] * 2, 7, seed=5)
  data = NamedSharding(mesh, P("data", None))
  prompt_s, pmask_s = jax.device_put(prompt, data), jax.device_put(pmask, data)

  @jax.jit
  def run(p, tokens, mask, rng, temperature):
    return gkd_jax.sample(model, p, tokens, mask, rng, max_new_tokens=6, temperature=temperature)

  rng = jax.random.key(0)
  got = run(sharded, prompt_s, pmask_s, rng, 0.0)  # traced temperature 0 is greedy too
  want = gkd_jax.sample(model, params, prompt, pmask, rng, max_new_tokens=6, temperature=0.0)
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
  np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(want.logprobs), atol=1e-5)
  hot = run(sharded, prompt_s, pmask_s, rng, 1.0)
  assert (np.asarray(hot.tokens) != np.asarray(got.tokens)).any()


def test_bfloat16_decode_tracks_bfloat16_score():
  model, params = tiny("gemma3")
  bf = build(model.config, jnp.bfloat16)
  params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  prompt, pmask = _prompts(model.config.vocab_size, [7, 4], 7, seed=6)
  out, logits = gkd_jax.sample(
      bf,
      params,
      prompt,
      pmask,
      jax.random.key(0),
      max_new_tokens=6,
      temperature=0.0,
      eos_id=None,
      return_logits=True,
  )
  assert out.tokens.dtype == jnp.int32 and logits.dtype == jnp.float32
  seq, smask = _concat_left_aligned(prompt, pmask, np.asarray(out.tokens))
  ref = np.asarray(gkd_jax.score(bf, params, seq, smask))[:, -7:-1]
  assert np.abs(np.asarray(logits) - ref).max() < 0.05 * np.abs(ref).max()
