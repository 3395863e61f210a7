"""The instructions task: the checker on hand-written completions, the bundled files (sizes,
disjointness, valid chat records), and the build script's generator (deterministic, no teacher)."""

import importlib.util
import json
import os

import pytest

from gkd_jax import data
from gkd_jax.tasks import TASKS, asset_dir, get_task, instructions as task

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
ASSETS = asset_dir("instructions")
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def _build_script():
  """experiments/build_instruction_prompts.py as a module (its generator needs no teacher)."""
  path = os.path.join(ROOT, "experiments", "build_instruction_prompts.py")
  spec = importlib.util.spec_from_file_location("build_instruction_prompts", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _records(split):
  with open(os.path.join(ASSETS, split), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _question(record):
  return record["messages"][0]["content"]


def _decoded(question, specials=False):
  """What the trainer's eval decodes from SmolLM2's chat-templated prompt ids."""
  if specials:
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
  return f"system\n{SYSTEM}\nuser\n{question}\nassistant\n"


def test_registered():
  assert "instructions" in TASKS
  assert get_task("instructions") is task


@pytest.mark.parametrize(
    "question, completion, answer, right",
    [
        ("What is 7 + 5?", "12", "12", True),
        ("What is 7 + 5?", "To add 7 and 5, you simply add them together: 7 + 5 = 12.", "12", True),
        ("What is 7 + 5?", "The answer is twelve.", "12", True),
        ("What is 7 + 5?", "7 + 5 = 13", "12", False),
        ("What is 7 + 5?", "The answer is 13, not 12.", "12", False),
        ("What is 7 + 5?", "Adding numbers is fun!", "12", False),
        ("What is 7 + 5?", "", "12", False),
        ("How many grams are in 2 kilograms?", "2 kilograms is 2,000 grams.", "2000", True),
        ("How many grams are in 2 kilograms?", "That is 2000 grams.", "2000", True),
        ("How many grams are in 2 kilograms?", "1000 grams = 2 kilograms", "2000", False),
        ("How many days are in 3 weeks?", "3 weeks is 3 * 7 = 21 days.", "21", True),
        ("How many cm are in 2 meters?", "Multiply 2 meters by 100: that is 200 cm.", "200", True),
        ("How many days are in 3 weeks?", "Divide 3 weeks by 7 to get the days.", "21", False),
        ("How many legs does a spider have?", "A spider has eight legs.", "8", True),
        ("How many legs does a chicken have?", "A chicken has four legs.", "2", False),
        ("What is the capital of France?", "The capital of France is Paris.", "Paris", True),
        ("What is the capital of France?", "PARIS!", "Paris", True),
        ("What is the capital of Colombia?", "It is Bogotá.", "Bogota", True),
        ("What is the capital of Atlantis?", "It is Poseidonia.", "Poseidonia", True),
        ("What is the capital of Atlantis?", "It is Lyon. Poseidonia is big.", "Poseidonia", False),
        ("What is the capital of France?", "Parisian food is great.", "Paris", False),
        ("What is the opposite of hot?", "The opposite of 'hot' is 'cold'.", "cold", True),
        ("What is the opposite of hot?", "Hot is a temperature.", "cold", False),
    ],
)
def test_check_with_an_explicit_answer(question, completion, answer, right):
  assert task.is_correct(question, completion, answer=answer) is right
  assert task.is_correct(_decoded(question), completion, answer=answer) is right


def test_word_answers_are_told_apart_from_the_kinds_other_answers():
  q = "What month comes before June?"
  cands = task.candidates_for(q, "May", ["April", "May", "June", "December"])
  assert cands == ["April", "December", "May"]  # June is the question's own word
  assert task.check(q, "The month before June is May.", "May", cands)
  assert not task.check(q, "The month before June is December.", "May", cands)
  assert not task.check(q, "It could be April, May or December.", "May", cands)
  assert task.check(q, "May. Then comes June.", "May", cands)


def test_choices_take_the_first_option_named():
  q, options = "Which is larger, 37 or 52?", ["37", "52"]
  assert task.check(q, "The larger number is 52.", "52", options)
  assert task.check(q, "52 is larger than 37.", "52", options)
  assert not task.check(q, "37 is smaller than 52.", "52", options)
  assert not task.check(q, "Both are numbers.", "52", options)


def test_numbers_parse_digits_commas_and_words():
  values = [v for v, _, _ in task.numbers("1,000 and 2000, twenty-one, two thousand, -3, the 3rd")]
  assert values == [1000, 2000, 21, 2000, -3, 3]


def test_bundled_questions_are_looked_up_in_the_decoded_prompt():
  record = next(r for r in _records("eval.jsonl") if "answer" in r)
  q, answer = _question(record), record["answer"]
  for prompt in (q, _decoded(q), _decoded(q, specials=True)):
    assert task.find_question(prompt) == q
    assert task.is_correct(prompt, f"The answer is {answer}.")
  assert not task.is_correct(_decoded(q), "I do not know.")


def test_open_ended_prompts_are_not_checkable():
  record = next(r for r in _records("eval.jsonl") if "answer" not in r)
  prompt = _decoded(_question(record))
  assert task.find_question(prompt) is None
  assert not task.is_correct(prompt, "Anything at all.")
  assert task.evaluate([prompt], ["Anything."]) == {
      "checkable_accuracy": 0.0,
      "num_checkable": 0,
      "accuracy": 0.0,
  }


def test_every_bundled_answer_is_accepted_and_a_wrong_one_refused():
  records = [r for split in ("train.jsonl", "eval.jsonl") for r in _records(split) if "answer" in r]
  by_kind = {}
  for r in records:
    by_kind.setdefault(r["kind"], set()).add(r["answer"])
  for r in records:
    prompt, answer = _decoded(_question(r)), r["answer"]
    assert task.is_correct(prompt, f"The answer is {answer}."), r
    if task.is_number(answer) and "options" not in r:
      wrong = str(int(answer) + 1)
    else:
      others = sorted(set(r.get("options", by_kind[r["kind"]])) - {answer})
      others = [o for o in others if not task.mentions(_question(r), o)] or ["nothing"]
      wrong = others[0]
    assert not task.is_correct(prompt, f"The answer is {wrong}."), (r, wrong)


def test_evaluate_counts_only_checkable_prompts():
  records = _records("eval.jsonl")
  checkable = [r for r in records if "answer" in r]
  half = {_question(r) for r in checkable[: len(checkable) // 2]}  # answered right
  prompts = [_decoded(_question(r)) for r in records]
  completions = [
      f"The answer is {r['answer']}." if _question(r) in half else "Hmm." for r in records
  ]
  out = task.evaluate(prompts, completions)
  assert out["num_checkable"] == len(checkable)
  assert out["checkable_accuracy"] == pytest.approx(len(half) / len(checkable))
  assert out["accuracy"] == out["checkable_accuracy"] == task.accuracy(prompts, completions)
  with pytest.raises(ValueError):
    task.evaluate(prompts, completions[:-1])


def test_bundled_files_sizes_and_disjointness():
  train, evals = _records("train.jsonl"), _records("eval.jsonl")
  assert len(train) == 3000 and len(evals) == 300
  q_train, q_eval = {_question(r) for r in train}, {_question(r) for r in evals}
  assert len(q_train) == len(train) and len(q_eval) == len(evals)  # no duplicates
  assert not q_train & q_eval
  n_check = sum("answer" in r for r in evals)
  assert 0.1 * len(evals) <= n_check <= 0.2 * len(evals)
  assert sum("answer" in r for r in train) >= 0.1 * len(train)
  assert {r["kind"] for r in train if "answer" in r} == {r["kind"] for r in evals if "answer" in r}
  # Held-out topics and checkable facts never reach train.
  train_topics = {(r["kind"], r["topic"]) for r in train}
  for r in evals:
    if r["heldout_topic"] or "answer" in r:
      assert (r["kind"], r["topic"]) not in train_topics, r
  assert 0.3 * len(evals) <= sum(r["heldout_topic"] for r in evals)
  size = sum(os.path.getsize(os.path.join(ASSETS, f)) for f in os.listdir(ASSETS))
  assert size < 2**20


def test_bundled_kinds_are_the_ones_the_teacher_passed():
  with open(os.path.join(ASSETS, "teacher_accuracy.json"), encoding="utf-8") as f:
    table = json.load(f)["kinds"]
  kept = {k for k, row in table.items() if row["accuracy"] >= 0.7}
  assert kept == {k for k, row in table.items() if row["kept"]}
  assert {r["kind"] for r in _records("train.jsonl") if "answer" in r} == kept


@pytest.mark.parametrize("split", ["train.jsonl", "eval.jsonl"])
def test_records_are_valid_chat_records(split):
  path = os.path.join(ASSETS, split)
  records = data.read_jsonl_records(path)
  assert len(records) == len(_records(split))
  for r in records:
    assert [m["role"] for m in r["messages"]] == ["user"]
    content = r["messages"][0]["content"]
    assert content == content.strip() and "\n" not in content and len(content) <= 160


@pytest.fixture(scope="module")
def smollm_tokenizer():
  """The teacher's tokenizer (skips where the cached model is missing)."""
  from gkd_jax import released, tokenizers  # pylint: disable=import-outside-toplevel

  try:
    return tokenizers.load_tokenizer(str(released.path(released.SMOLLM2_135M)))
  except FileNotFoundError as e:
    pytest.skip(str(e))


def test_prompts_are_short_for_the_teachers_tokenizer(smollm_tokenizer):
  records = _records("train.jsonl") + _records("eval.jsonl")
  assert max(len(smollm_tokenizer.encode(_question(r), add_bos=False)) for r in records) <= 40


def test_questions_are_found_in_prompts_as_the_trainer_decodes_them(smollm_tokenizer):
  """data's own pipeline (chat template, left padding), then the eval's decode of the prompt."""
  tok = smollm_tokenizer
  pad = data.TokenizeAndPad(tok, max_prompt_len=64, max_completion_len=4)
  validated = data.read_jsonl_records(os.path.join(ASSETS, "eval.jsonl"))
  for r, v in zip(_records("eval.jsonl"), validated):
    row = pad.map(v)
    prompt = tok.decode(list(row["prompt_tokens"][row["prompt_mask"] == 1]))
    assert task.find_question(prompt) == (_question(r) if "answer" in r else None), prompt
    if "answer" in r:
      assert task.is_correct(prompt, f"It is {r['answer']}.")


def test_the_generator_is_deterministic_and_seeded():
  build = _build_script()
  kinds = ["capital", "arith_add_1digit", "day_after"]
  a = build.generate(seed=3, num_train=200, num_eval=40, checkable=kinds)
  b = build.generate(seed=3, num_train=200, num_eval=40, checkable=kinds)
  assert a == b
  train, evals = a
  assert len(train) == 200 and len(evals) == 40
  assert not {_question(r) for r in train} & {_question(r) for r in evals}
  assert {r["kind"] for r in train if "answer" in r} == set(kinds)
  assert build.generate(seed=4, num_train=200, num_eval=40, checkable=kinds) != a


def test_every_candidate_fact_is_well_formed():
  build = _build_script()
  for kind, facts in build.checkable_kinds().items():
    build.check_facts(kind, facts)  # raises on a prompt that contains its own answer
    assert len(facts) >= 7, kind
