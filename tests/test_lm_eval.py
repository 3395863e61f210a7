"""lm_eval: teacher-scored metrics against a dense float64 formula, text metrics against brute force."""

import itertools

import jax
import numpy as np
import pytest

import gkd_jax
from gkd_jax import lm_eval, testing

V = 48


@pytest.fixture(scope="module")
def pair():
  student = testing.tiny("llama", seed=1, vocab_size=V)
  teacher = testing.tiny("llama", seed=2, vocab_size=V, num_layers=3, embed_dim=40)
  return student, teacher


def _log_softmax64(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_teacher_scored_equals_dense_float64(pair):
  (sm, sp), (tm, tp) = pair
  rng = np.random.default_rng(0)
  prompts = lm_eval.pad_prompts([rng.integers(3, V, n).tolist() for n in (5, 2, 7, 4, 6)], pad_id=0)
  answers = lm_eval.generate(
      sm, sp, prompts, eos_ids=[2], max_new_tokens=9, temperature=1.0, seed=3, batch_size=2
  )
  assert answers.mask.sum() > answers.mask.shape[0]  # real samples, not all ended at once
  exclude = np.array([False, True, False, False, True])
  got = lm_eval.teacher_scored(sm, sp, tm, tp, prompts, answers, batch_size=3, exclude=exclude)
  tokens = np.concatenate([prompts.tokens, answers.tokens], 1)
  mask = np.concatenate([prompts.mask, answers.mask], 1)
  P, N = prompts.tokens.shape[1], answers.tokens.shape[1]
  ls = _log_softmax64(gkd_jax.score(sm, sp, tokens, mask))[:, P - 1 : P + N - 1]
  lt = _log_softmax64(gkd_jax.score(tm, tp, tokens, mask))[:, P - 1 : P + N - 1]
  m = answers.mask.astype(bool)
  rkl = (np.exp(ls) * (ls - lt)).sum(-1)
  fkl = (np.exp(lt) * (lt - ls)).sum(-1)
  tlp = np.take_along_axis(lt, answers.tokens[..., None], -1)[..., 0]
  for key, x in (("reverse_kl", rkl), ("forward_kl", fkl), ("teacher_logprob", tlp)):
    np.testing.assert_allclose(got[key], x[m].mean(), rtol=1e-5)
    keep = m & ~exclude[:, None]
    np.testing.assert_allclose(got[f"{key}_noloop"], x[keep].mean(), rtol=1e-5)


def test_generate_in_batches_equals_one_call(pair):
  (sm, sp), _ = pair
  rng = np.random.default_rng(1)
  prompts = lm_eval.pad_prompts([rng.integers(3, V, n).tolist() for n in (3, 6, 4)], 0)
  one = lm_eval.generate(sm, sp, prompts, [2], max_new_tokens=6, temperature=0.0, batch_size=3)
  out = gkd_jax.sample(
      sm,
      sp,
      prompts.tokens,
      prompts.mask,
      jax.random.key(0),
      max_new_tokens=6,
      temperature=0.0,
      eos_id=[2],
  )
  np.testing.assert_array_equal(one.tokens, out.tokens)
  split = lm_eval.generate(sm, sp, prompts, [2], max_new_tokens=6, temperature=0.0, batch_size=2)
  np.testing.assert_array_equal(split.tokens * split.mask, one.tokens * one.mask)


def _lcs_brute(a, b):
  for k in range(min(len(a), len(b)), 0, -1):
    subs = set(itertools.combinations(b, k))
    if any(s in subs for s in itertools.combinations(a, k)):
      return k
  return 0


@pytest.mark.parametrize("seed", range(6))
def test_rouge_l_is_the_lcs_f1(seed):
  rng = np.random.default_rng(seed)
  words = ["a", "b", "c", "d", "e"]
  a = list(rng.choice(words, rng.integers(1, 8)))
  b = list(rng.choice(words, rng.integers(1, 8)))
  lcs = _lcs_brute(a, b)
  want = 0.0 if lcs == 0 else 2 * (lcs / len(a)) * (lcs / len(b)) / (lcs / len(a) + lcs / len(b))
  assert lm_eval.rouge_l(" ".join(a), " ".join(b).upper()) == pytest.approx(want)


def test_repetition_and_loops():
  assert lm_eval.repetition([1, 2, 3, 4, 5]) == 0.0
  loop = [1, 2, 3, 4] * 3  # 9 four-grams, 4 distinct
  assert lm_eval.repetition(loop) == pytest.approx(1 - 4 / 9)
  assert lm_eval.has_loop(loop) and not lm_eval.has_loop([1, 2, 3, 4] * 2 + [5])
  answers = lm_eval.Answers(
      np.array([[5, 6, 2, 0], [5, 5, 5, 5]]), np.array([[1, 1, 1, 0], [1, 1, 1, 1]])
  )
  m = lm_eval.text_metrics(answers, stops=[2], texts=["x y", "z"], references=["x y", "q"])
  assert m["eos_rate"] == 0.5 and m["length"] == 3.5 and m["rouge_l"] == 0.5
