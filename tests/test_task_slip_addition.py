"""The slip-addition task: generator (slip rate, clean data has none), scorer, per-completion analysis,
and the committed assets."""

import json
import os
import random
import re

import pytest

from gkd_jax.tasks import asset_dir, get_task, slip_addition as task
from gkd_jax.tokenizers import load_tokenizer

ASSETS = asset_dir("slip_addition")
STEP = re.compile(r"(\d+)(?:/(\d+))?\+(\d+)(?:/(\d+))?\+(\d+)(?:/(\d+))?=(\d+)(?:/(\d+))?")


def _columns(a, b):
  """Independent column-addition reference: (x, y, carry, sum) per column, rightmost first."""
  out, carry, i = [], 0, 0
  while i == 0 or a // 10**i or b // 10**i:
    x, y = (a // 10**i) % 10, (b // 10**i) % 10
    out.append((x, y, carry, x + y + carry))
    carry, i = int(x + y + carry >= 10), i + 1
  return out


def _parse(completion):
  """[(written, corrected or None) x 4 per step], answer."""
  body, answer = completion[1:].split("|=")
  steps = []
  for s in body.split("|"):
    m = STEP.fullmatch(s)
    assert m, s
    g = m.groups()
    steps.append(
        [(int(g[2 * k]), None if g[2 * k + 1] is None else int(g[2 * k + 1])) for k in range(4)]
    )
  return steps, answer


def test_documented_example_and_clean_completions():
  assert task.make_completion(472, 389) == " 2+9+0=11|7+8+1=16|4+3+1=8|=861"
  rng = random.Random(0)
  for _ in range(300):
    a, b = rng.randrange(10 ** rng.randint(1, 8)), rng.randrange(10 ** rng.randint(1, 8))
    steps, answer = _parse(task.make_completion(a, b))
    assert answer == str(a + b)
    assert [tuple(w for w, _ in s) for s in steps] == _columns(a, b)
    assert all(c is None for s in steps for _, c in s)  # clean: no correction anywhere


def test_slipped_completions_slip_at_the_rate_and_always_correct_to_the_truth():
  rng, slipped, total = random.Random(1), 0, 0
  for a, b in task.generate_problems(3000, seed=5, min_digits=3, max_digits=7):
    completion = task.slipped_completion(a, b, rng, slip_rate=0.1)
    steps, answer = _parse(completion)
    assert answer == str(a + b)
    for step, truth in zip(steps, _columns(a, b), strict=True):
      fixes = [(w, c) for w, c in step if c is not None]
      assert len(fixes) <= 1
      for (w, c), t in zip(step, truth):
        assert (c if c is not None else w) == t  # the corrected value is the true one
        assert c is None or w != t  # a correction always follows a wrong value
      slipped += bool(fixes)
      total += 1
    assert task.is_correct(task.make_prompt(a, b), completion)
  rate = slipped / total
  assert abs(rate - 0.1) < 3 * (0.1 * 0.9 / total) ** 0.5, rate
  rng = random.Random(1)
  assert task.slipped_completion(123, 456, rng, 0.0) == task.make_completion(123, 456)


def test_generate_problems_distinct_deterministic_disjoint():
  pairs = task.generate_problems(500, seed=3, min_digits=3, max_digits=5)
  assert pairs == task.generate_problems(500, seed=3, min_digits=3, max_digits=5)
  assert len(set(pairs)) == 500
  assert {max(len(str(a)), len(str(b))) for a, b in pairs} == {3, 4, 5}
  other = task.generate_problems(100, seed=3, min_digits=3, max_digits=5, exclude=pairs[:50])
  assert not set(other) & set(pairs[:50])
  with pytest.raises(ValueError, match="min_digits"):
    task.generate_problems(1, 0, 4, 3)


@pytest.mark.parametrize(
    "completion,correct",
    [
        (" 2+9+0=11|7+8+1=16|4+3+1=8|=861", True),
        (" 2+9+0=12/11|7+8+1=16|4+3+1=8|=861", True),  # corrected slip
        (" 2+9+0=11|7+8+1=16|4+3+1=8|=86/861", True),  # corrections resolve anywhere
        (" 2+9+0=11|7+8+1=16|4+3+1=8|=851", False),
        (" 2+9+0=11|7+8+1=16|4+3+1=8|=861/851", False),  # "corrected" to a wrong answer
        (" 2+9+0=11|7+8+1=16|4+3+1=8|=8612", False),
        (" 2+9+0=11|7+8+1=16|4+3+1=8", False),  # no answer
        ("", False),
    ],
)
def test_scorer_resolves_corrections_and_rejects_wrong_answers(completion, correct):
  assert task.is_correct("Q: 472+389\nA:", completion) is correct


def test_analyse_counts_slips_repairs_and_first_error():
  p = "Q: 472+389\nA:"
  ok = task.analyse(p, " 2+9+0=11|7+8+1=16|4+3+1=8|=861")
  assert ok == {"correct": True, "difficulty": 3, "slips": 0, "repaired": 0, "first_error": None}
  fixed = task.analyse(p, " 2+9+0=12/11|7+8+1=16|4+3+1=8|=861")
  assert (fixed["slips"], fixed["repaired"], fixed["first_error"]) == (1, 1, None)
  bad_fix = task.analyse(p, " 2+9+0=11|7+8+1=14/15|4+3+1=8|=851")
  assert (bad_fix["slips"], bad_fix["repaired"], bad_fix["first_error"]) == (1, 0, 1)
  dropped_carry = task.analyse(p, " 2+9+0=11|7+8+0=15|4+3+1=8|=851")
  assert dropped_carry["first_error"] == 1 and not dropped_carry["correct"]
  garbage = task.analyse(p, " 2+9+0=11|7+8")
  assert garbage["first_error"] == 1
  assert task.analyse(p, " 2+9+0=11|7+8+1=16|4+3+1=8|0+0+1=1|=861")["first_error"] == 3
  hist = task.first_error_histogram(
      [p] * 3,
      [" 2+9+0=11|7+8", " 2+9+0=12|7+8+1=16|4+3+1=8|=861", " 2+9+0=11|7+8+1=16|4+3+1=8|=861"],
  )
  assert hist == [1, 1, 0, 0]


def test_evaluate_reports_per_difficulty_and_rates():
  prompts = ["Q: 472+389\nA:", "Q: 1234+8\nA:", "Q: 1000+2000\nA:"]
  completions = [
      " 2+9+0=12/11|7+8+1=16|4+3+1=8|=861",
      " 4+8+0=12|3+0+1=4|2+0+0=2|1+0+0=1|=1242",
      " 0+0+0=0|0+0+0=1|0+0+1=1|1+2+0=3|=3110",
  ]
  m = get_task("slip_addition").evaluate(prompts, completions)
  assert m["accuracy"] == pytest.approx(2 / 3)
  assert (m["accuracy_d3"], m["accuracy_d4"]) == (1.0, 0.5)
  assert m["slips_per_example"] == pytest.approx(4 / 3)  # one repaired; sum, carry, sum wrong
  assert m["repair_rate"] == pytest.approx(1 / 4)
  assert m["first_error_frac"] == pytest.approx(1 / 4)  # only the third is wrong: column 1 of 4
  assert all(isinstance(v, float) for v in m.values())


def test_committed_assets_are_disjoint_clean_and_tokenizable():
  read = lambda name: [json.loads(line) for line in open(os.path.join(ASSETS, name))]
  train, held_out = read("train.jsonl"), read("eval.jsonl")
  assert len(held_out) >= 1000
  assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
  for r in train[:2000] + held_out:
    a, b = task.parse_prompt(r["prompt"])
    assert r["completion"] == task.make_completion(a, b)  # clean data: no slips
  tok = load_tokenizer(os.path.join(ASSETS, "tokenizer.model"))
  text = held_out[0]["prompt"] + " 7+8+1=15/16|=3"
  assert tok.decode(tok.encode(text)) == text
  for name in ("teacher", "student_init"):
    assert os.path.isfile(os.path.join(ASSETS, name, "config.json"))
