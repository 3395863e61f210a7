"""How close a student is to its teacher on held-out prompts: the metrics of a real-model run.

  answers = generate(student, s_params, prompts, eos_ids, max_new_tokens=64, temperature=1.0)
  m = teacher_scored(student, s_params, teacher, t_params, prompts, answers)   # token means
  m.update(text_metrics(tokenizer, answers, reference=teacher_greedy))         # EOS, loops, ROUGE-L

Teacher-scored (on the student's own samples, each a per-token mean over every valid answer token,
the end token included; full-vocabulary, streamed by the divergence kernels so no [N, V] logits are
held): `reverse_kl` KL(p_S‖p_T), `forward_kl` KL(p_T‖p_S), `teacher_logprob` log p_T(y_t). Each also
`*_noloop`: over the answers without a loop only, because a teacher gives repetition loops and
short generic answers a high log-probability, so no teacher-scored number alone says "quality".
Text: `eos_rate` (answers that ended within the budget), `length` (tokens), `repetition` (1 −
distinct/total token 4-grams, per answer), `loop_rate` (answers in which some token 4-gram occurs 3+
times), `rouge_l` (word-level LCS F1 against a reference answer, e.g. the teacher's greedy one).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections import Counter
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gkd_jax import kernels, sampling, scoring
from gkd_jax.models import api


@dataclasses.dataclass
class Prompts:
  """Left-padded prompt ids [B, P] and their mask (1 = real token)."""

  tokens: np.ndarray
  mask: np.ndarray


@dataclasses.dataclass
class Answers:
  """Answer ids [B, N] and their mask (1 up to and including the end token)."""

  tokens: np.ndarray
  mask: np.ndarray

  def ids(self, row: int, stops: Sequence[int] = ()) -> list[int]:
    """The row's valid ids, without stop tokens."""
    return [int(t) for t, m in zip(self.tokens[row], self.mask[row]) if m and t not in stops]


def pad_prompts(prompt_ids: Sequence[Sequence[int]], pad_id: int, length: int = 0) -> Prompts:
  """Left-pads id lists to one length (at least `length`)."""
  P = max([length] + [len(p) for p in prompt_ids])
  tokens = np.full((len(prompt_ids), P), pad_id, np.int32)
  mask = np.zeros((len(prompt_ids), P), np.int32)
  for i, p in enumerate(prompt_ids):
    if p:
      tokens[i, P - len(p) :] = p
      mask[i, P - len(p) :] = 1
  return Prompts(tokens, mask)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_ids"))
def _sample(model, params, tokens, mask, rng, temperature, *, max_new_tokens, eos_ids):
  return sampling.sample(
      model,
      params,
      tokens,
      mask,
      rng,
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      eos_id=eos_ids,
  )


def _batches(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield slice(start, min(start + batch_size, n))


def _rows(x: np.ndarray, rows: slice, batch_size: int) -> np.ndarray:
  """x[rows], padded with copies of its last row to `batch_size` rows (one compiled shape)."""
  x = x[rows]
  if len(x) < batch_size:
    x = np.concatenate([x, np.repeat(x[-1:], batch_size - len(x), 0)])
  return x


def generate(
    model,
    params,
    prompts: Prompts,
    eos_ids: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float,
    seed: int = 0,
    batch_size: int = 16,
) -> Answers:
  """Answers to every prompt (temperature 0: greedy), `batch_size` prompts at a time."""
  n = len(prompts.tokens)
  batch_size = min(batch_size, n)
  tokens, masks = [], []
  for i, rows in enumerate(_batches(n, batch_size)):
    out = _sample(
        model,
        params,
        _rows(prompts.tokens, rows, batch_size),
        _rows(prompts.mask, rows, batch_size),
        jax.random.fold_in(jax.random.key(seed), i),
        jnp.float32(temperature),
        max_new_tokens=max_new_tokens,
        eos_ids=tuple(eos_ids),
    )
    k = rows.stop - rows.start
    tokens.append(np.asarray(out.tokens)[:k])
    masks.append(np.asarray(out.mask)[:k])
  return Answers(np.concatenate(tokens), np.concatenate(masks))


@functools.partial(jax.jit, static_argnames=("student", "teacher", "P"))
def _token_scores(student, s_params, teacher, t_params, tokens_BxT, mask_BxT, P):
  """Per completion position [B, N]: reverse KL, forward KL, teacher log-prob of the token."""
  N = tokens_BxT.shape[1] - P
  hs = scoring.score(student, s_params, tokens_BxT, mask_BxT, return_hidden=True)
  ht = scoring.score(teacher, t_params, tokens_BxT, mask_BxT, return_hidden=True)
  B = tokens_BxT.shape[0]
  hs_ND = hs[:, P - 1 : P + N - 1].reshape(B * N, -1)
  ht_ND = ht[:, P - 1 : P + N - 1].reshape(B * N, -1)
  y_N = tokens_BxT[:, P:].reshape(B * N)
  ws, wt = api.unembedding(student, s_params), api.unembedding(teacher, t_params)
  caps = dict(
      student_softcap=student.config.final_logit_softcap,
      teacher_softcap=teacher.config.final_logit_softcap,
  )
  rkl = kernels.fused_linear_divergence(hs_ND, ws, ht_ND, wt, kind="reverse_kl", **caps)
  fkl = kernels.fused_linear_divergence(hs_ND, ws, ht_ND, wt, kind="forward_kl", **caps)
  t_lp = -kernels.cross_entropy(ht_ND, wt, y_N, softcap=teacher.config.final_logit_softcap)
  return tuple(x.reshape(B, N) for x in (rkl, fkl, t_lp))


def teacher_scored(
    student,
    s_params,
    teacher,
    t_params,
    prompts: Prompts,
    answers: Answers,
    batch_size: int = 8,
    exclude: Optional[np.ndarray] = None,
) -> dict:
  """Token means of reverse_kl, forward_kl, teacher_logprob over valid answer tokens, and the
  same over the rows where `exclude` is False (`*_noloop` when `exclude` marks looping answers)."""
  n, P = prompts.tokens.shape
  tokens = np.concatenate([prompts.tokens, answers.tokens], 1)
  mask = np.concatenate([prompts.mask, answers.mask], 1)
  batch_size = min(batch_size, n)
  per_row = {k: np.zeros(n) for k in ("reverse_kl", "forward_kl", "teacher_logprob")}
  for rows in _batches(n, batch_size):
    k = rows.stop - rows.start
    out = _token_scores(
        student,
        s_params,
        teacher,
        t_params,
        jnp.asarray(_rows(tokens, rows, batch_size)),
        jnp.asarray(_rows(mask, rows, batch_size)),
        P,
    )
    m = answers.mask[rows]
    for key, x in zip(per_row, out):
      per_row[key][rows] = (np.asarray(x)[:k] * m).sum(1)
  counts = answers.mask.sum(1).astype(np.float64)
  result = {k: float(v.sum() / max(counts.sum(), 1)) for k, v in per_row.items()}
  if exclude is not None:
    keep = ~np.asarray(exclude, bool)
    for k, v in per_row.items():
      result[f"{k}_noloop"] = float(v[keep].sum() / max(counts[keep].sum(), 1))
  return result


def ngram_counts(ids: Sequence[int], n: int = 4) -> Counter:
  return Counter(tuple(ids[i : i + n]) for i in range(len(ids) - n + 1))


def repetition(ids: Sequence[int], n: int = 4) -> float:
  """1 − distinct/total token n-grams (0: no n-gram repeats)."""
  counts = ngram_counts(ids, n)
  total = sum(counts.values())
  return 0.0 if total == 0 else 1.0 - len(counts) / total


def has_loop(ids: Sequence[int], n: int = 4, times: int = 3) -> bool:
  """Whether some token n-gram occurs `times` or more times (a repetition loop)."""
  return any(c >= times for c in ngram_counts(ids, n).values())


def _words(text: str) -> list[str]:
  return re.findall(r"\w+", text.lower())


def rouge_l(candidate: str, reference: str) -> float:
  """ROUGE-L F1: the longest common subsequence of lower-cased words, harmonic mean of P and R."""
  a, b = _words(candidate), _words(reference)
  if not a or not b:
    return float(a == b)
  prev = [0] * (len(b) + 1)
  for x in a:
    row = [0]
    for j, y in enumerate(b):
      row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
    prev = row
  lcs = prev[-1]
  if lcs == 0:
    return 0.0
  p, r = lcs / len(a), lcs / len(b)
  return 2 * p * r / (p + r)


def text_metrics(
    answers: Answers,
    stops: Sequence[int],
    texts: Optional[Sequence[str]] = None,
    references: Optional[Sequence[str]] = None,
) -> dict:
  """eos_rate, length, repetition, loop_rate (and rouge_l of `texts` against `references`)."""
  ids = [answers.ids(i, stops) for i in range(len(answers.tokens))]
  ended = [
      bool(any(answers.tokens[i][answers.mask[i] == 1][-1:] == s for s in stops))
      for i in range(len(ids))
  ]
  out = {
      "eos_rate": float(np.mean(ended)),
      "length": float(np.mean(answers.mask.sum(1))),
      "repetition": float(np.mean([repetition(x) for x in ids])),
      "loop_rate": float(np.mean([has_loop(x) for x in ids])),
  }
  if texts is not None and references is not None:
    out["rouge_l"] = float(np.mean([rouge_l(t, r) for t, r in zip(texts, references)]))
  return out


def loops(answers: Answers, stops: Sequence[int]) -> np.ndarray:
  """[B] bool: which answers loop (`has_loop`)."""
  return np.array([has_loop(answers.ids(i, stops)) for i in range(len(answers.tokens))])
