"""Step-by-step addition with slips and corrections: a task where on-policy distillation can matter.

A problem and a clean completion look like this:

  prompt:     "Q: 472+389\nA:"
  completion: " 2+9+0=11|7+8+1=16|4+3+1=8|=861"

Every column, from the right, is written as "{digit of a}+{digit of b}+{carry in}={column sum}"
(the carry is always written, 0 or 1, and a missing digit of the shorter operand is 0); steps are
separated by "|" and the completion ends with "|=" and the sum.

Any value of a step (either digit, the carry or the sum) may be written wrong and then corrected in
place with "/": "7+8+1=15/16" means "I wrote 15, I meant 16". The teacher's training corpus
(`slipped_completion`) contains such slips with probability `slip_rate` per step, each followed by
its correction, so the teacher has learnt what to do in a state where a wrong value has just been
written: correct it. The supervised data that the student is distilled on is clean (no slips), and is
written by a different process (`make_completion`), as the GKD paper's human references are. A student
that only imitates clean data never sees its own mistakes; a student trained on its own samples
meets them and, with a teacher that recovers, learns to repair them.

Scoring resolves every correction ("x/y" -> "y") and checks the final sum against the true sum of the
prompt's operands (teacher-free). `analyse` also reports, per completion, the first unrepaired wrong
value (its column) and how many wrong values were repaired.
"""

from __future__ import annotations

import random
import re
from typing import Iterable, Optional, Sequence

from gkd_jax.tasks.arithmetic import (
    build_tokenizer_model,
    join_steps,
    make_prompt,
    parse_prompt,
    random_operand,
    true_steps,
    write_jsonl,
)

__all__ = [
    "make_prompt",
    "parse_prompt",
    "write_jsonl",
    "build_tokenizer_model",
    "make_completion",
    "slipped_completion",
    "generate_problems",
    "resolve",
    "extract_answer",
    "is_correct",
    "accuracy",
    "difficulty",
    "analyse",
    "evaluate",
    "first_error_histogram",
]

SLOTS = ("x", "y", "c", "s")  # the four values of a step: digit of a, digit of b, carry in, sum
VALUE = r"(\d+)(?:/(\d+))?"  # a written value, optionally corrected once: "15" or "15/16"
STEP_RE = re.compile(rf"{VALUE}\+{VALUE}\+{VALUE}={VALUE}")
CORRECTION_RE = re.compile(r"\d+/(\d+)")
ANSWER_RE = re.compile(r"\|=(\d+)(?!\d)")


def _render(values: Sequence[str]) -> str:
  x, y, c, s = values
  return f"{x}+{y}+{c}={s}"


def make_completion(a: int, b: int) -> str:
  """The clean step-by-step completion (with its leading space) for a + b, a, b >= 0."""
  steps = [_render([str(v) for v in step]) for step in true_steps(a, b)]
  return join_steps(steps, a, b)


def _wrong_value(rng: random.Random, slot: str, value: int) -> int:
  """A plausible wrong value for a slot: another digit, the other carry, a sum off by 1 or 2."""
  if slot == "c":
    return 1 - value
  if slot in ("x", "y"):
    return rng.choice([d for d in range(10) if d != value])
  return rng.choice([v for v in (value - 2, value - 1, value + 1, value + 2) if v >= 0])


def slipped_completion(a: int, b: int, rng: random.Random, slip_rate: float) -> str:
  """The teacher corpus' completion: each step slips with probability `slip_rate` (one of its four
  values, chosen uniformly, is written wrong and immediately corrected: "7+8+1=15/16")."""
  steps = []
  for step in true_steps(a, b):
    values = [str(v) for v in step]
    if rng.random() < slip_rate:
      k = rng.randrange(4)
      values[k] = f"{_wrong_value(rng, SLOTS[k], step[k])}/{step[k]}"
    steps.append(_render(values))
  return join_steps(steps, a, b)


def generate_problems(
    n: int, seed: int, min_digits: int, max_digits: int, exclude: Iterable[tuple[int, int]] = ()
) -> list[tuple[int, int]]:
  """`n` distinct (a, b); the longer operand has min..max digits (uniform), the other 1..that many.

  Deterministic in `seed`; pairs in `exclude` are never produced (keeps data sets disjoint).
  """
  if not 1 <= min_digits <= max_digits:
    raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
  rng, seen, out = random.Random(seed), set(exclude), []
  while len(out) < n:
    digits = rng.randint(min_digits, max_digits)
    a, b = random_operand(rng, digits, digits), random_operand(rng, 1, digits)
    if rng.random() < 0.5:
      a, b = b, a
    if (a, b) not in seen:
      seen.add((a, b))
      out.append((a, b))
  return out


def resolve(completion_text: str) -> str:
  """The completion with every correction applied: "7+8+1=15/16" -> "7+8+1=16"."""
  return CORRECTION_RE.sub(r"\1", completion_text)


def extract_answer(completion_text: str) -> Optional[str]:
  """The digits after the first "|=" of the resolved completion, or None when there is none."""
  m = ANSWER_RE.search(resolve(completion_text))
  return None if m is None else m.group(1)


def is_correct(prompt: str, completion_text: str) -> bool:
  """Exact match of the resolved final answer with the true sum of the prompt's operands."""
  a, b = parse_prompt(prompt)
  return extract_answer(completion_text) == str(a + b)


def accuracy(prompts: Sequence[str], completions: Sequence[str]) -> float:
  """Fraction of completions whose resolved answer is exactly right (0.0 for no examples)."""
  return evaluate(prompts, completions)["accuracy"]


def difficulty(prompt: str) -> int:
  """Number of columns of the problem: the digits of the longer operand."""
  a, b = parse_prompt(prompt)
  return max(len(str(a)), len(str(b)))


def analyse(prompt: str, completion_text: str) -> dict:
  """What happened in one completion, against the true trace of the prompt's problem.

  Returns {"correct", "difficulty", "slips", "repaired", "first_error"}: `slips` counts written
  values (first writing) that were wrong, `repaired` those of them immediately corrected to the true
  value, and `first_error` is the column (0 = rightmost) of the first value left wrong after
  corrections, or of the first step that does not parse; None when every step is right.
  """
  a, b = parse_prompt(prompt)
  truth = true_steps(a, b)
  body = completion_text.strip().split("|=")[0]
  steps = body.split("|") if body else []
  slips = repaired = 0
  first_error = None
  for col, expected in enumerate(truth):
    m = STEP_RE.fullmatch(steps[col]) if col < len(steps) else None
    if m is None:
      first_error = col if first_error is None else first_error
      break
    for k in range(4):
      written, corrected = m.group(2 * k + 1), m.group(2 * k + 2)
      final = corrected if corrected is not None else written
      if int(written) != expected[k]:
        slips += 1
        repaired += corrected is not None and int(corrected) == expected[k]
      if int(final) != expected[k] and first_error is None:
        first_error = col
  if first_error is None and len(steps) != len(truth):
    first_error = len(truth)  # extra steps
  return {
      "correct": is_correct(prompt, completion_text),
      "difficulty": len(truth),
      "slips": slips,
      "repaired": repaired,
      "first_error": first_error,
  }


def evaluate(prompts: Sequence[str], completions: Sequence[str]) -> dict:
  """Task metrics of one set of completions (one per prompt), all floats:

  accuracy; accuracy_d{N} per difficulty N (columns); slips_per_example (wrong values written);
  repair_rate (fraction of them immediately corrected to the true value; 0 when there are none);
  first_error_frac (mean column of the first unrepaired error over the problem's columns, among
  completions that have one; 1 when none has).
  """
  if len(prompts) != len(completions):
    raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
  rows = [analyse(p, c) for p, c in zip(prompts, completions)]
  out = {"accuracy": sum(r["correct"] for r in rows) / max(len(rows), 1)}
  for d in sorted({r["difficulty"] for r in rows}):
    group = [r["correct"] for r in rows if r["difficulty"] == d]
    out[f"accuracy_d{d}"] = sum(group) / len(group)
  slips = sum(r["slips"] for r in rows)
  out["slips_per_example"] = slips / max(len(rows), 1)
  out["repair_rate"] = sum(r["repaired"] for r in rows) / slips if slips else 0.0
  errors = [r for r in rows if r["first_error"] is not None]
  out["first_error_frac"] = (
      sum(r["first_error"] / r["difficulty"] for r in errors) / len(errors) if errors else 1.0
  )
  return out


def first_error_histogram(prompts: Sequence[str], completions: Sequence[str]) -> list[int]:
  """Counts of completions by the column of their first unrepaired error (index = column; the
  last entry counts completions with extra steps); correct traces are not counted."""
  rows = [analyse(p, c) for p, c in zip(prompts, completions)]
  hist = [0] * (max((r["difficulty"] for r in rows), default=0) + 1)
  for r in rows:
    if r["first_error"] is not None:
      hist[min(r["first_error"], len(hist) - 1)] += 1
  return hist
