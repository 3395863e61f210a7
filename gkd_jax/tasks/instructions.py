"""Single-turn instruction prompts (chat records) with a checkable slice, for prune-and-distill.

The bundled files (`assets/instructions/train.jsonl`, `eval.jsonl`, built by
`experiments/build_instruction_prompts.py`) hold chat records

  {"messages": [{"role": "user", "content": PROMPT}], "kind": KIND, "topic": ..., ...}

Most are open-ended (explain, poem, tips, compare, ...: no reference answer; the distillation
divergence is their measure). The checkable slice also carries `"answer"` (and `"options"` for a
choice between named options), for question kinds the teacher (SmolLM2-135M-Instruct) was measured
to answer right at least 70% of the time: small arithmetic, unit conversions and lookups.

Checking (no teacher involved), after the question is found in the prompt (`find_question`):

- number answers: the model's answer is the first number of the completion (digits, "1,000", or
  number words up to the thousands: "four") that is neither one of the question's own numbers nor
  an operand of a written calculation (next to + - * x / ÷, or after "by", "times", "plus",
  "minus": the 2 and 7 of "2 * 7 = 14", the 100 of "multiply 2 meters by 100"; a result after "="
  counts). Completions restate the question and show their working ("To add 7 and 5: 7 + 5 =
  12"), so the literal first number would grade the restatement, not the answer.
- word answers: among the candidate answers of the record's kind (every answer of that kind in the
  bundled files, less the words of the question itself), the first one that the completion names,
  as a whole word (or its plural), case- and accent-insensitively, must be the answer ("The
  opposite of hot is cold." is right; "The month before June is December." is wrong; so is
  "Poland is in Europe. Its capital is Krakow, not Warsaw."). The teacher often opens with a
  sentence of context before the answer, so the whole completion is searched, not only its first
  sentence. With an explicit `answer` and no known kind (nothing to tell a wrong answer by), the
  first sentence must name the answer.
- choices ("Which is larger, 37 or 52?", "Is 7 even or odd?"): the first of the record's options
  that the completion names must be the answer (restating the question names the first option
  first, and is wrong).

A prompt whose question is not a bundled checkable one (and with no explicit `answer`) is not
checkable: `is_correct` is False for it and `evaluate` leaves it out. The prompts given to
`evaluate` are what the trainer's eval decodes (the chat-templated ids, special tokens dropped:
"system\\n...\\nuser\\nQUESTION\\nassistant\\n"); the question is the line of the prompt that is a
bundled question, after any special-token markers (`<|im_start|>`, `<start_of_turn>`, ...) are cut.
"""

from __future__ import annotations

import functools
import json
import os
import re
import unicodedata
from typing import Optional, Sequence

__all__ = [
    "ASSETS",
    "load_checkable",
    "find_question",
    "numbers",
    "model_number",
    "first_sentence",
    "mentions",
    "first_candidate",
    "is_number",
    "candidates_for",
    "check",
    "is_correct",
    "accuracy",
    "evaluate",
]

ASSETS = os.path.join(os.path.dirname(__file__), "assets", "instructions")
SPLITS = ("train.jsonl", "eval.jsonl")

_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
WORD_VALUES = {w: i for i, w in enumerate(_UNITS)} | {w: 20 + 10 * i for i, w in enumerate(_TENS)}
_UNIT = "|".join(sorted(_UNITS, key=len, reverse=True))
_DIGIT_WORD = "|".join(_UNITS[1:10])
_DIGITS = r"(?<![\w.,])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_WORDS = (
    rf"\b(?:(?:{'|'.join(_TENS)})(?:[- ](?:{_DIGIT_WORD}))?|{_UNIT})(?:\s+(?:hundred|thousand))?\b"
)
NUMBER_RE = re.compile(rf"{_DIGITS}|{_WORDS}", re.IGNORECASE)
_OPERATOR_AFTER = re.compile(
    r"\s*(?:[-+*/×÷x]\s*[\d(]|(?:times|plus|minus|multiplied by|divided by)\s+\d)", re.IGNORECASE
)
_OPERATOR_BEFORE = re.compile(
    r"(?:[-+*/×÷]|(?<![a-z])x|\b(?:by|times|plus|minus))\s*\(?\s*$", re.IGNORECASE
)
_MARKER_RE = re.compile(r"<\|[^|>\n]{1,40}\|>|</?s>|<(?:start|end)_of_turn>|<bos>|<eos>|\[/?INST\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def _fold(text: str) -> str:
  """Lower case without accents ("Bogotá" -> "bogota"), for matching."""
  decomposed = unicodedata.normalize("NFKD", text)
  return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


@functools.lru_cache(maxsize=None)
def _word_re(phrase: str) -> re.Pattern:
  """A phrase as a whole word (not inside another word or a contraction like "it's"), any spaces,
  its plural allowed ("rupee" matches "rupees")."""
  body = r"\s+".join(re.escape(part) for part in _fold(phrase).split())
  return re.compile(rf"(?<!\w)(?<!\w'){body}(?:e?s)?(?!\w)(?!'\w)")


def _word_value(text: str) -> int:
  """The value of a number written in words: "twenty-one" -> 21, "two thousand" -> 2000."""
  parts = re.split(r"[-\s]+", text.lower())
  scale = {"hundred": 100, "thousand": 1000}.get(parts[-1], 1)
  return sum(WORD_VALUES[p] for p in parts if p in WORD_VALUES) * scale


def _value(token: str) -> float:
  if token[-1].isdigit():
    return float(token.replace(",", ""))
  return float(_word_value(token))


def numbers(text: str) -> list[tuple[float, int, int]]:
  """(value, start, end) of every number written in `text`, in order: digits ("1,000" is 1000,
  "3rd" is 3) and number words ("four", "twenty-one", "two thousand")."""
  return [(_value(m.group()), m.start(), m.end()) for m in NUMBER_RE.finditer(text)]


def _is_operand(text: str, start: int, end: int) -> bool:
  """Whether the number at text[start:end] is an operand of a written calculation: next to an
  operator sign, or after "by", "times", "plus", "minus" ("multiply 2 meters by 100")."""
  return bool(_OPERATOR_AFTER.match(text, end) or _OPERATOR_BEFORE.search(text[:start]))


def model_number(question: str, completion: str) -> Optional[float]:
  """The model's number answer (see the module docstring), or None when it writes none."""
  quoted = {value for value, _, _ in numbers(question)}
  for value, start, end in numbers(completion):
    if value not in quoted and not _is_operand(completion, start, end):
      return value
  return None


def first_sentence(text: str) -> str:
  """The completion's first non-empty sentence (cut at . ! ? followed by space, or a newline)."""
  for part in _SENTENCE_END.split(text.strip()):
    if part.strip():
      return part.strip()
  return ""


def mentions(text: str, phrase: str) -> bool:
  """Whether `text` names `phrase` as a whole word (case- and accent-insensitive)."""
  return _word_re(phrase).search(_fold(text)) is not None


def first_candidate(sentence: str, candidates: Sequence[str]) -> Optional[str]:
  """The candidate named earliest in `sentence` (whole words, case- and accent-insensitive); the
  longer one where two start at the same place; None when it names none."""
  folded, best = _fold(sentence), None
  for cand in candidates:
    m = _word_re(cand).search(folded)
    if m and (best is None or (m.start(), -len(cand)) < (best[0], -len(best[1]))):
      best = (m.start(), cand)
  return None if best is None else best[1]


def is_number(answer: str) -> bool:
  """Whether an answer is a number ("12", "1,000", "-3")."""
  return re.fullmatch(r"-?\d+(?:\.\d+)?", answer.replace(",", "")) is not None


def candidates_for(
    question: str, answer: str, vocabulary: Sequence[str] = (), options: Sequence[str] = ()
) -> list[str]:
  """The answers a completion's first sentence is searched for: a choice's options, else the kind's
  vocabulary less the words of the question (the answer itself always included)."""
  if options:
    return sorted(set(options) | {answer})
  others = [v for v in vocabulary if v != answer and not mentions(question, v)]
  return sorted(set(others) | {answer})


def check(question: str, completion: str, answer: str, candidates: Sequence[str] = ()) -> bool:
  """Whether `completion` answers `question` with `answer` (see the module docstring): a number
  answer (without `candidates`) by `model_number`; else the first of `candidates` that the
  completion names must be the answer; without candidates, the first sentence must name it."""
  if is_number(answer) and not candidates:
    got = model_number(question, completion)
    return got is not None and got == float(answer.replace(",", ""))
  if not candidates:
    return mentions(first_sentence(completion), answer)
  named = first_candidate(completion, list(candidates))
  return named is not None and _fold(named) == _fold(answer)


@functools.lru_cache(maxsize=4)
def load_checkable(asset_dir: str = ASSETS) -> dict[str, dict]:
  """question -> {"answer", "kind", "options"?} over the bundled files' checkable records."""
  table = {}
  for split in SPLITS:
    path = os.path.join(asset_dir, split)
    if not os.path.isfile(path):
      continue
    with open(path, encoding="utf-8") as f:
      for line in f:
        record = json.loads(line) if line.strip() else {}
        if "answer" in record:
          question = record["messages"][-1]["content"]
          table[question] = {k: record[k] for k in ("answer", "kind", "options") if k in record}
  return table


@functools.lru_cache(maxsize=4)
def _vocabularies(asset_dir: str = ASSETS) -> dict[str, tuple[str, ...]]:
  """kind -> every answer of that kind in the bundled files."""
  out = {}
  for entry in load_checkable(asset_dir).values():
    out.setdefault(entry["kind"], set()).add(entry["answer"])
  return {k: tuple(sorted(v)) for k, v in out.items()}


def find_question(prompt: str, table: Optional[dict] = None) -> Optional[str]:
  """The bundled checkable question in `prompt` (the whole prompt, or its last line that is one,
  special-token markers cut), or None."""
  table = load_checkable() if table is None else table
  if prompt.strip() in table:
    return prompt.strip()
  for line in reversed(_MARKER_RE.sub("\n", prompt).splitlines()):
    if line.strip() in table:
      return line.strip()
  return None


def is_correct(prompt: str, completion: str, answer: Optional[str] = None) -> bool:
  """Whether `completion` answers the checkable question in `prompt` right; False for a prompt
  that is not checkable. `answer` overrides the bundled answer (and makes any prompt checkable)."""
  table = load_checkable()
  question = find_question(prompt, table)
  entry = table.get(question, {}) if question else {}
  answer = entry.get("answer") if answer is None else answer
  if answer is None:
    return False
  vocabulary = _vocabularies().get(entry.get("kind"), ()) if entry else ()
  cands = (
      candidates_for(question, answer, vocabulary, entry.get("options", ()))
      if entry and not (is_number(answer) and not entry.get("options"))
      else ()
  )
  return check(question or prompt, completion, answer, cands)


def evaluate(prompts: Sequence[str], completions: Sequence[str]) -> dict:
  """{"checkable_accuracy", "num_checkable", "accuracy"}: the fraction right among the prompts
  that are checkable (0.0 when none is), their number, and `accuracy` = checkable_accuracy (the
  trainer's and `gkd-jax compare`'s headline key)."""
  if len(prompts) != len(completions):
    raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
  table = load_checkable()
  right = [is_correct(p, c) for p, c in zip(prompts, completions) if find_question(p, table)]
  acc = sum(right) / len(right) if right else 0.0
  return {"checkable_accuracy": acc, "num_checkable": len(right), "accuracy": acc}


def accuracy(prompts: Sequence[str], completions: Sequence[str]) -> float:
  """The checkable accuracy (see `evaluate`)."""
  return evaluate(prompts, completions)["accuracy"]
