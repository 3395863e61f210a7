"""The bundled arithmetic task: step-by-step completions, scoring, and the committed assets."""

import json
import os
import random
import re

import pytest

from gkd_jax.tasks import arithmetic, asset_dir, get_task
from gkd_jax.tokenizers import load_tokenizer

ASSETS = asset_dir("arithmetic")


def _check_steps(a, b, completion):
  """Independent check of a completion: every column step, the carries and the final sum."""
  assert completion.startswith(" ")
  *steps, final = completion[1:].split("|")
  assert final == f"={a + b}"
  assert len(steps) == max(len(str(a)), len(str(b)))
  carry = 0
  for i, step in enumerate(steps):
    m = re.fullmatch(r"(\d)\+(\d)(\+1)?=(\d+)", step)
    assert m, step
    x, y, c, s = int(m.group(1)), int(m.group(2)), m.group(3) is not None, int(m.group(4))
    assert x == (a // 10**i) % 10 and y == (b // 10**i) % 10
    assert c == (carry == 1)
    assert s == x + y + carry
    carry = 1 if s >= 10 else 0


def test_documented_example():
  assert arithmetic.make_prompt(472, 389) == "Q: 472+389\nA:"
  assert arithmetic.make_completion(472, 389) == " 2+9=11|7+8+1=16|4+3+1=8|=861"


def test_completions_are_correct_column_additions():
  rng = random.Random(0)
  pairs = [
      (rng.randint(0, 10 ** rng.randint(1, 5)), rng.randint(0, 10 ** rng.randint(1, 5)))
      for _ in range(300)
  ] + [(9999, 9999), (9999, 1), (0, 0), (5, 5), (10, 90)]
  for a, b in pairs:
    _check_steps(a, b, arithmetic.make_completion(a, b))


def test_generate_examples_distinct_deterministic_in_range():
  ex = arithmetic.generate_examples(200, seed=3, min_digits=2, max_digits=3)
  assert ex == arithmetic.generate_examples(200, seed=3, min_digits=2, max_digits=3)
  assert ex != arithmetic.generate_examples(200, seed=4, min_digits=2, max_digits=3)
  assert len({e["prompt"] for e in ex}) == 200
  lengths = set()
  for e in ex:
    a, b = arithmetic.parse_prompt(e["prompt"])
    for v in (a, b):
      assert 2 <= len(str(v)) <= 3
      lengths.add(len(str(v)))
    _check_steps(a, b, e["completion"])
  assert lengths == {2, 3}
  excluded = arithmetic.generate_examples(
      50, seed=3, min_digits=2, max_digits=3, exclude=[e["prompt"] for e in ex[:10]]
  )
  assert not {e["prompt"] for e in excluded} & {e["prompt"] for e in ex[:10]}
  with pytest.raises(ValueError):
    arithmetic.generate_examples(101, seed=0, min_digits=1, max_digits=1)  # only 100 exist
  with pytest.raises(ValueError):
    arithmetic.generate_examples(8101, seed=0, min_digits=2, max_digits=2)  # 90*90 exist
  with pytest.raises(ValueError):
    arithmetic.generate_examples(1, seed=0, min_digits=3, max_digits=2)


def test_extract_answer_and_scoring():
  p = "Q: 472+389\nA:"
  good = " 2+9=11|7+8+1=16|4+3+1=8|=861"
  assert arithmetic.extract_answer(good) == "861"
  assert arithmetic.is_correct(p, good)
  assert arithmetic.is_correct(p, " garbage steps|=861")  # only the answer is graded
  assert arithmetic.is_correct(p, good + " and more text")
  assert not arithmetic.is_correct(p, " 2+9=11|7+8=15|4+3=7|=751")  # a dropped carry propagates
  assert not arithmetic.is_correct(p, " 2+9=11|7+8+1=16|4+3+1=8|=8610")
  assert not arithmetic.is_correct(p, " 2+9=11|7+8+1=16|4+3+1=8|=86")
  assert not arithmetic.is_correct(p, " 2+9=11|7+8+1=16|4+3+1=8")
  assert arithmetic.extract_answer(" 1+2=3") is None
  assert arithmetic.extract_answer("") is None
  assert arithmetic.extract_answer(" 1+1=2|=2|=3") == "2"  # the first answer counts
  with pytest.raises(ValueError, match="not an arithmetic prompt"):
    arithmetic.is_correct("What is 2+2?", "|=4")


def test_accuracy_counts_exact_matches():
  ex = arithmetic.generate_examples(40, seed=9)
  rng = random.Random(1)
  completions, want = [], 0
  for e in ex:
    a, b = arithmetic.parse_prompt(e["prompt"])
    if rng.random() < 0.4:
      completions.append(e["completion"].rsplit("|=", 1)[0] + f"|={a + b + rng.randint(1, 9)}")
    else:
      completions.append(e["completion"])
      want += 1
  got = arithmetic.accuracy([e["prompt"] for e in ex], completions)
  assert got == want / len(ex)
  assert arithmetic.accuracy([], []) == 0.0
  with pytest.raises(ValueError):
    arithmetic.accuracy(["Q: 1+1\nA:"], [])


def _read(name):
  with open(os.path.join(ASSETS, name)) as f:
    return [json.loads(l) for l in f]


def test_bundled_assets_are_rebuilt_exactly(tmp_path):
  train, evals = _read("train.jsonl"), _read("eval.jsonl")
  assert len(train) >= 2000 and 200 <= len(evals) <= 1000
  assert not {e["prompt"] for e in train} & {e["prompt"] for e in evals}
  for e in train[:500] + evals:
    a, b = arithmetic.parse_prompt(e["prompt"])
    assert e["completion"] == arithmetic.make_completion(a, b)
  # The committed files are what the documented builder writes (defaults: seed 0, 5000/500).
  eval_ex = arithmetic.generate_examples(len(evals), 1, 2, 4)
  train_ex = arithmetic.generate_examples(
      len(train), 0, 2, 4, exclude=[e["prompt"] for e in eval_ex]
  )
  arithmetic.write_jsonl(tmp_path / "t.jsonl", train_ex)
  arithmetic.write_jsonl(tmp_path / "e.jsonl", eval_ex)
  for mine, theirs in (("t.jsonl", "train.jsonl"), ("e.jsonl", "eval.jsonl")):
    with open(tmp_path / mine, "rb") as f, open(os.path.join(ASSETS, theirs), "rb") as g:
      assert f.read() == g.read(), theirs
  with open(os.path.join(ASSETS, "tokenizer.model"), "rb") as f:
    assert f.read() == arithmetic.build_tokenizer_model()


def test_bundled_tokenizer_is_character_level():
  tok = load_tokenizer(ASSETS)
  assert tok.vocab_size <= 64 and tok.vocab_size % 8 == 0
  assert tok.pad_id == 0 and tok.bos_id is not None and tok.eos_id is not None
  assert len({tok.pad_id, tok.bos_id, tok.eos_id}) == 3
  unk = tok.impl.unk_id()
  for e in _read("eval.jsonl")[:50]:
    text = e["prompt"] + e["completion"]
    ids = tok.encode(text, add_bos=False)
    assert len(ids) == len(text) and unk not in ids  # one token per character
    assert tok.decode(ids) == text
  for ch in arithmetic.TOKENIZER_CHARS + "\n":
    assert len(tok.encode(ch, add_bos=False)) == 1, repr(ch)


def test_get_task():
  assert get_task("arithmetic") is arithmetic
  with pytest.raises(ValueError, match="arithmetic"):
    get_task("gsm8k")
