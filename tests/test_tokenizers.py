"""Tokenizers (sentencepiece and tokenizer.json), special ids from checkpoint files, chat templates."""

import json
import os
import pickle

import pytest

from gkd_jax import testing
from gkd_jax import tokenizers as tk

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "chat_templates", "rendered.json")
SAMPLES = [
    "Hello world, the student learns.",
    "12345 + 678 = ?",
    "  two  spaces\nnew line",
    "distillation",
]


def _write_json(directory, name, obj):
  with open(os.path.join(directory, name), "w") as f:
    json.dump(obj, f)


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("sp"))
  testing.build_sentencepiece(d, chat=True)
  return d


def test_sentencepiece_encode_decode(sp_dir):
  import sentencepiece as spm

  ref = spm.SentencePieceProcessor(model_file=os.path.join(sp_dir, "tokenizer.model"))
  for path in (sp_dir, os.path.join(sp_dir, "tokenizer.model")):
    tok = tk.load_tokenizer(path)
    assert tok.backend == "sentencepiece"
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (2, 3, 0)
    assert tok.vocab_size == ref.get_piece_size()
    for text in SAMPLES:
      ids = tok.encode(text, add_bos=False)
      assert ids == ref.encode(text)
      assert tok.encode(text) == [tok.bos_id] + ids
      assert tok.decode(ids) == text
      # decode does not stop at EOS; it drops the special ids (the caller cuts at EOS).
      assert tok.decode([tok.bos_id] + ids + [tok.eos_id] + ids + [tok.pad_id]) == text + text
  assert tok.token_to_id("<end_of_turn>") is not None
  assert tok.token_to_id("<definitely-not-a-piece>") is None


def test_special_ids_preference_order(tmp_path, sp_dir):
  import shutil

  d = str(tmp_path / "ckpt")
  shutil.copytree(sp_dir, d)
  tok = tk.load_tokenizer(d)
  eot = tok.token_to_id("<end_of_turn>")
  # config.json beats the model ...
  _write_json(
      d, "config.json", {"text_config": {"eos_token_id": 5}, "pad_token_id": 7, "bos_token_id": 2}
  )
  tok = tk.load_tokenizer(d)
  assert (tok.eos_id, tok.pad_id) == (5, 7)
  # ... generation_config.json beats config.json (and lists every stop id) ...
  _write_json(d, "generation_config.json", {"eos_token_id": [9, eot], "bos_token_id": 2})
  tok = tk.load_tokenizer(d)
  assert tok.eos_id == 9 and tok.stop_ids[:2] == (9, eot) and 5 in tok.stop_ids
  assert tok.pad_id == 7
  # ... and tokenizer_config.json's token strings beat both.
  _write_json(
      d,
      "tokenizer_config.json",
      {"eos_token": {"content": "<end_of_turn>"}, "pad_token": "<pad>", "bos_token": "<s>"},
  )
  tok = tk.load_tokenizer(d)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (2, eot, 0)
  assert tok.stop_ids[0] == eot and 9 in tok.stop_ids


@pytest.mark.parametrize("family", ["chatml", "llama3", "gemma"])
def test_tokenizer_json(tmp_path, family):
  from tokenizers import Tokenizer

  path = testing.build_tokenizer_json(str(tmp_path / family), family)
  ref = Tokenizer.from_file(path)
  tok = tk.load_tokenizer(os.path.dirname(path))
  assert tok.backend == "tokenizers"
  assert tok.vocab_size == ref.get_vocab_size(with_added_tokens=True)
  specials = testing.CHAT_SPECIALS[family]
  want_eos = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "gemma": "<eos>"}[family]
  assert tok.eos_id == ref.token_to_id(want_eos)
  if family == "chatml":
    assert tok.bos_id is None and tok.pad_id == ref.token_to_id("<|endoftext|>")
  elif family == "llama3":
    assert tok.bos_id == ref.token_to_id("<|begin_of_text|>")
    assert tok.pad_id == tok.eos_id  # no pad token: pads with EOS (always masked)
  for text in SAMPLES:
    ids = tok.encode(text, add_bos=False)
    assert ids == ref.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text
    assert tok.encode(text, add_bos=True) == ([] if tok.bos_id is None else [tok.bos_id]) + ids
  # Special tokens inside text are single tokens.
  for s in specials:
    assert tok.encode(s, add_bos=False) == [ref.token_to_id(s)]


def test_pickle_round_trip(tmp_path, sp_dir):
  for tok in (
      tk.load_tokenizer(sp_dir),
      tk.load_tokenizer(
          os.path.dirname(testing.build_tokenizer_json(str(tmp_path / "j"), "chatml"))
      ),
  ):
    copy = pickle.loads(pickle.dumps(tok))
    assert (copy.bos_id, copy.eos_id, copy.pad_id, copy.vocab_size) == (
        tok.bos_id,
        tok.eos_id,
        tok.pad_id,
        tok.vocab_size,
    )
    for text in SAMPLES:
      assert copy.encode(text) == tok.encode(text)


def test_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tk.load_tokenizer(str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="no tokenizer.model or tokenizer.json"):
    tk.load_tokenizer(str(tmp_path))


def _cases():
  with open(FIXTURES) as f:
    return json.load(f)["cases"]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: f"{c['template']}-{c['conversation']}")
def test_chat_template_matches_reference_jinja(case):
  """Fixtures: the checkpoints' own Jinja templates rendered by transformers."""
  assert case["rendered"].startswith(case["bos_text"])
  want = case["rendered"][len(case["bos_text"]) :]
  got = tk.apply_chat_template(
      case["messages"], case["family"], add_generation_prompt=case["add_generation_prompt"]
  )
  assert got == want


def test_chat_fixture_covers_every_family():
  assert {c["family"] for c in _cases()} == set(tk.CHAT_FAMILIES)


@pytest.mark.parametrize("family", ["chatml", "llama3", "gemma"])
def test_chat_round_trip_through_tokenizer(tmp_path, family):
  tok = tk.load_tokenizer(
      os.path.dirname(testing.build_tokenizer_json(str(tmp_path / family), family))
  )
  messages = [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Hello"},
      {"role": "assistant", "content": "Hello student."},
      {"role": "user", "content": "Numbers 12345?"},
  ]
  text = tk.apply_chat_template(messages, family)
  ids = tok.encode(text, add_bos=True)
  bos_text = "" if tok.bos_id is None else tok.id_to_token(tok.bos_id)
  assert tok.decode(ids, skip_special=False) == bos_text + text
  end = tok.token_to_id(tk.end_of_turn_token(family))
  assert ids.count(end) == len(messages) - (1 if family == "gemma" else 0)  # gemma: system merged
  opener = {"chatml": "<|im_start|>", "llama3": "<|start_header_id|>", "gemma": "<start_of_turn>"}[
      family
  ]
  assert text.endswith(tk.apply_chat_template([messages[-1]], family).split(opener)[-1])


def test_chat_template_errors():
  with pytest.raises(ValueError, match="unknown chat family"):
    tk.apply_chat_template([{"role": "user", "content": "x"}], "mistral")
  with pytest.raises(ValueError, match="only allowed first"):
    tk.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], "gemma"
    )
  with pytest.raises(ValueError, match=r"messages\[0\]"):
    tk.apply_chat_template([{"role": "user", "content": 3}], "llama3")
  with pytest.raises(ValueError, match="non-empty"):
    tk.apply_chat_template([], "chatml")
  assert tk.chat_family("qwen3") == "chatml" and tk.chat_family("gemma3_text") == "gemma"
  assert tk.chat_family("qwen2") == "qwen2.5" and tk.chat_family("llama") == "llama3"
