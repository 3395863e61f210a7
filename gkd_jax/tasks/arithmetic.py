"""Multi-digit addition written out step by step: the bundled task where a student's own mistakes matter.

A problem and its completion look like this:

  prompt:     "Q: 472+389\nA:"
  completion: " 2+9=11|7+8+1=16|4+3+1=8|=861"

The completion adds the operands column by column from the right. Each step is
"{digit of a}+{digit of b}[+1]={column sum}", where "+1" appears exactly when the previous column
carried (its sum was >= 10) and a missing digit of the shorter operand is written as 0. The steps are
separated by "|" and the completion ends with "|=" and the sum. A wrong digit or a dropped carry in an
early step propagates to every later step and to the answer, so a student that has only imitated
teacher-written (dataset) completions drifts when it must continue its own, imperfect ones: exactly the
train/inference mismatch on-policy distillation addresses.

Scoring is exact match of the final answer (the digits after the first "|=") against the true sum
computed from the prompt; the steps themselves are not graded.
"""

from __future__ import annotations

import json
import random
import re
from typing import Iterable, Optional, Sequence

PROMPT_RE = re.compile(r"^Q: (\d+)\+(\d+)\nA:$")
ANSWER_RE = re.compile(r"\|=(\d+)(?!\d)")


def make_prompt(a: int, b: int) -> str:
  return f"Q: {a}+{b}\nA:"


def true_steps(a: int, b: int) -> list[tuple[int, int, int, int]]:
  """(x, y, carry in, column sum) for each column of a + b, rightmost first."""
  da, db = str(a)[::-1], str(b)[::-1]
  steps, carry = [], 0
  for i in range(max(len(da), len(db))):
    x = int(da[i]) if i < len(da) else 0
    y = int(db[i]) if i < len(db) else 0
    steps.append((x, y, carry, x + y + carry))
    carry = (x + y + carry) // 10
  return steps


def join_steps(steps: Sequence[str], a: int, b: int) -> str:
  """A completion from its written steps: leading space, "|" between steps, "|=" and the sum."""
  return " " + "|".join(steps) + f"|={a + b}"


def make_completion(a: int, b: int) -> str:
  """The step-by-step completion (with its leading space) for a + b, a, b >= 0."""
  steps = [f"{x}+{y}" + ("+1" if c else "") + f"={s}" for x, y, c, s in true_steps(a, b)]
  return join_steps(steps, a, b)


def random_operand(rng: random.Random, min_digits: int, max_digits: int) -> int:
  """A uniform number of min..max digits, then a uniform operand of that many digits."""
  digits = rng.randint(min_digits, max_digits)
  low = 0 if digits == 1 else 10 ** (digits - 1)
  return rng.randint(low, 10**digits - 1)


def generate_examples(
    n: int, seed: int, min_digits: int = 2, max_digits: int = 4, exclude: Iterable[str] = ()
) -> list[dict]:
  """`n` distinct problems {"prompt", "completion"}; each operand has min..max digits (uniform).

  Deterministic in `seed`. Prompts in `exclude` are never produced (keeps train and eval disjoint).
  """
  if not 1 <= min_digits <= max_digits:
    raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
  operands = 10**max_digits - (10 ** (min_digits - 1) if min_digits > 1 else 0)
  capacity = operands**2
  seen = set(exclude)
  if n > capacity - len(seen):
    raise ValueError(f"cannot draw {n} distinct problems with at most {max_digits} digits")
  rng = random.Random(seed)
  out = []
  while len(out) < n:
    a, b = random_operand(rng, min_digits, max_digits), random_operand(rng, min_digits, max_digits)
    prompt = make_prompt(a, b)
    if prompt in seen:
      continue
    seen.add(prompt)
    out.append({"prompt": prompt, "completion": make_completion(a, b)})
  return out


def write_jsonl(path: str, examples: Sequence[dict]) -> None:
  """One JSON object per line, keys sorted, so rebuilt files are byte-identical."""
  with open(path, "w") as f:
    for ex in examples:
      f.write(json.dumps(ex, sort_keys=True) + "\n")


def parse_prompt(prompt: str) -> tuple[int, int]:
  m = PROMPT_RE.match(prompt)
  if m is None:
    raise ValueError(f"not an arithmetic prompt: {prompt!r}")
  return int(m.group(1)), int(m.group(2))


def extract_answer(completion_text: str) -> Optional[str]:
  """The digits after the first "|=" of a completion, or None when there is no answer."""
  m = ANSWER_RE.search(completion_text)
  return None if m is None else m.group(1)


def is_correct(prompt: str, completion_text: str) -> bool:
  """Exact match of the completion's final answer with the true sum of the prompt's operands."""
  a, b = parse_prompt(prompt)
  return extract_answer(completion_text) == str(a + b)


def accuracy(prompts: Sequence[str], completions: Sequence[str]) -> float:
  """Fraction of completions whose answer is exactly right (0.0 for no examples)."""
  if len(prompts) != len(completions):
    raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
  if not prompts:
    return 0.0
  return sum(is_correct(p, c) for p, c in zip(prompts, completions)) / len(prompts)


# Every character the task's tokenizer knows: one token each (sentencepiece "char" model), plus
# <pad>=0, <unk>=1, <s>=2 (BOS), </s>=3 (EOS), "\n" and the space piece "▁". A few spare characters
# (-*(),.?/b c) let variants of the task reuse the tokenizer; the vocabulary has 32 entries, a
# multiple of 8 so the vocab axis shards on small meshes.
TOKENIZER_CHARS = "0123456789+-*=|QA:cb(),.?/ "


def build_tokenizer_model() -> bytes:
  """Serialized sentencepiece model for the task (deterministic: same bytes every call)."""
  import io  # pylint: disable=import-outside-toplevel
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  # The char trainer orders pieces by frequency: feed each char once plus typical lines.
  lines = (
      [TOKENIZER_CHARS]
      + [make_prompt(a, b) for a, b in ((472, 389), (15, 9078))]
      + [make_completion(472, 389), make_completion(15, 9078)]
  )
  lines = [l.replace("\n", " ") for l in lines]  # the trainer reads lines; "\n" is user-defined
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines),
      model_writer=buf,
      model_type="char",
      vocab_size=5 + len(TOKENIZER_CHARS),
      user_defined_symbols=["\n"],
      pad_id=0,
      unk_id=1,
      bos_id=2,
      eos_id=3,
      add_dummy_prefix=False,
      remove_extra_whitespaces=False,
      normalization_rule_name="identity",
      character_coverage=1.0,
      num_threads=1,
      minloglevel=2,
  )
  return buf.getvalue()
