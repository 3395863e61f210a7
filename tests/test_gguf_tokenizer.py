"""Tokenizers rebuilt from GGUF metadata: ids equal to transformers' on the released models.

References: tests/fixtures/gguf/*/tokens.json (transformers' own GGUF tokenizer on 20 texts). The
real GGUF files are cached by `make models`; when one is missing the tests FAIL naming that command.
"""

import functools
import json
import os
import pickle

import gguf
import numpy as np
import pytest
import sentencepiece as spm

from gkd_jax import gguf_tokenizer as gt
from gkd_jax import released
from gkd_jax import tokenizers as tk

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "gguf")
MODELS = {"gemma3_270m": released.GEMMA3_270M, "smollm2_135m": released.SMOLLM2_135M}
# transformers matches every control token inside text; the model's own sentencepiece model (and
# so this one) never matches BOS, EOS and pad there. Only this text writes them.
CONTROL_TEXT = "<bos><eos><pad> <|endoftext|> [INST] </s> <s>"


@functools.lru_cache(maxsize=None)
def _tokenizer(name):
  """Built once per module; inside the test (not a fixture), so a missing file FAILS the test."""
  return gt.tokenizer_from_gguf(released.path(MODELS[name]))


@functools.lru_cache(maxsize=None)
def _fixture(name):
  with open(os.path.join(FIXTURES, name, "tokens.json"), encoding="utf-8") as f:
    return json.load(f)


def _mismatches(tok, ref, encode):
  return [i for i, text in enumerate(ref["texts"]) if encode(tok, text) != ref["ids"][i]]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_ids_equal_transformers_on_every_text(name):
  tok, ref = _tokenizer(name), _fixture(name)
  plain = _mismatches(tok, ref, lambda t, s: t.encode(s, add_bos=False))
  expected = [ref["texts"].index(CONTROL_TEXT)] if tok.backend == "sentencepiece" else []
  assert plain == expected, [ref["texts"][i] for i in plain]
  # Rendered chats cut unmatched control strings out (chat_template.encode_rendered): 0 mismatches.
  from gkd_jax import chat_template

  assert _mismatches(tok, ref, chat_template.encode_rendered) == []
  for text, ids in zip(ref["texts"], ref["ids_special"]):  # add_special_tokens=True: BOS or not
    if text != CONTROL_TEXT or tok.backend != "sentencepiece":
      assert tok.encode(text, add_bos=None) == ids


@pytest.mark.parametrize("name", sorted(MODELS))
def test_decode_round_trip(name):
  tok, ref = _tokenizer(name), _fixture(name)
  for text, ids, decoded in zip(ref["texts"], ref["ids"], ref["decoded"]):
    if text == CONTROL_TEXT and tok.backend == "sentencepiece":
      continue  # sentencepiece decodes a CONTROL symbol to ""
    assert tok.decode(ids, skip_special=False) == decoded
    assert tok.decode(tok.encode(text, add_bos=False), skip_special=False) == text


@pytest.mark.parametrize("name", sorted(MODELS))
def test_special_ids_and_settings(name):
  tok, ref = _tokenizer(name), _fixture(name)
  assert tok.vocab_size == ref["len"]
  for kind in ("bos", "eos", "pad", "unk"):
    assert getattr(tok, f"{kind}_id") == ref[f"{kind}_token_id"]
    assert tok.id_to_token(ref[f"{kind}_token_id"]) == ref[f"{kind}_token"]
  gemma = name == "gemma3_270m"
  assert tok.backend == ("sentencepiece" if gemma else "tokenizers")
  assert tok.add_bos_default is gemma  # GGUF add_bos_token
  assert (tok.chat_template is None) is gemma
  if not gemma:
    with open(os.path.join(FIXTURES, name, "chat.json"), encoding="utf-8") as f:
      assert tok.chat_template == json.load(f)["chat_template"]


def test_gemma_proto_is_the_models_sentencepiece_model():
  tok = _tokenizer("gemma3_270m")
  from sentencepiece import sentencepiece_model_pb2 as pb

  proto = pb.ModelProto.FromString(tok.impl.serialized_model_proto())
  assert proto.trainer_spec.model_type == pb.TrainerSpec.BPE and proto.trainer_spec.byte_fallback
  norm = proto.normalizer_spec
  assert (norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces) == ("identity", 0, 0)
  types = {p.piece: p.type for p in proto.pieces}
  piece = pb.ModelProto.SentencePiece
  assert [types[t] for t in ("<pad>", "<eos>", "<bos>")] == [piece.CONTROL] * 3
  assert types["<unk>"] == piece.UNKNOWN and types["<0x41>"] == piece.BYTE
  assert types["<start_of_turn>"] == types["\u2581\u2581"] == piece.USER_DEFINED  # "  " in GGUF
  assert tok.encode("<start_of_turn>user\n", add_bos=False)[0] == 105


@pytest.mark.parametrize("name", sorted(MODELS))
def test_saved_folder_and_pickle_reload_to_identical_ids(name, tmp_path):
  tok, ref = _tokenizer(name), _fixture(name)
  tk.save_tokenizer(tok, str(tmp_path))
  with open(tmp_path / "tokenizer_config.json", encoding="utf-8") as f:
    config = json.load(f)
  assert config["add_bos_token"] is tok.add_bos_default
  assert config["bos_token"] == ref["bos_token"] and config["eos_token"] == ref["eos_token"]
  assert config.get("chat_template") == tok.chat_template
  for again in (tk.load_tokenizer(str(tmp_path)), pickle.loads(pickle.dumps(tok))):
    assert (again.bos_id, again.eos_id, again.pad_id, again.unk_id) == (
        tok.bos_id,
        tok.eos_id,
        tok.pad_id,
        tok.unk_id,
    )
    assert again.chat_template == tok.chat_template
    assert again.add_bos_default == tok.add_bos_default
    for text in ref["texts"]:
      assert again.encode(text, add_bos=None) == tok.encode(text, add_bos=None)
  # load_tokenizer takes the .gguf file itself too.
  assert tk.load_tokenizer(str(released.path(MODELS[name]))).vocab_size == tok.vocab_size


# ------------------------------------------------------------------ small GGUF files written here

SAMPLES = [
    "Hello world, the student learns.",
    "a  b   c\n\nnew <start_of_turn>user\nhi<end_of_turn>\n",
    "bytes: 😀 ß 12345",
    "<bos> stays text",
]


def _write_gguf(path, **fields):
  """A GGUF file holding only metadata: {name: value} through GGUFWriter's add_<name>."""
  writer = gguf.GGUFWriter(str(path), "llama")
  for name, value in fields.items():
    getattr(writer, f"add_{name}")(value)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return str(path)


@pytest.fixture(scope="module")
def small_spm(tmp_path_factory):
  """A small Gemma-like sentencepiece model and a GGUF of it written as llama.cpp writes one."""
  d = tmp_path_factory.mktemp("spm")
  text = ["Hello world, the student learns.", "The teacher  scores   every token.\n\n"] * 10
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(text),
      model_prefix=str(d / "tokenizer"),
      model_type="bpe",
      vocab_size=340,
      pad_id=0,
      eos_id=1,
      bos_id=2,
      unk_id=3,
      user_defined_symbols=["\n", "\n\n", "<start_of_turn>", "<end_of_turn>", "\u2581\u2581"],
      normalization_rule_name="identity",
      add_dummy_prefix=False,
      remove_extra_whitespaces=False,
      allow_whitespace_only_pieces=True,
      byte_fallback=True,
      character_coverage=1.0,
      num_threads=1,
      minloglevel=2,
  )
  model = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
  n = model.get_piece_size()
  tokens, types = [], []
  for i in range(n):
    piece = model.id_to_piece(i)
    kind = 1
    if model.is_byte(i):
      kind = 6
    elif model.is_control(i) or model.is_unknown(i) or piece.startswith("<"):
      kind = 3  # llama.cpp: every special token of tokenizer_config is CONTROL, unk included
    elif piece in ("\n", "\n\n", "\u2581\u2581"):
      kind, piece = 4, piece.replace("\u2581", " ")  # user-defined spaces "pre-normalized"
    tokens.append(piece)
    types.append(kind)
  path = _write_gguf(
      d / "small.gguf",
      tokenizer_model="llama",
      token_list=tokens,
      token_scores=[model.get_score(i) for i in range(n)],
      token_types=types,
      bos_token_id=2,
      eos_token_id=1,
      unk_token_id=3,
      pad_token_id=0,
      add_bos_token=True,
      add_space_prefix=False,
      chat_template="{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}",
  )
  return model, path


def test_a_llama_cpp_gguf_gives_back_the_sentencepiece_model(small_spm):
  model, path = small_spm
  tok = tk.load_tokenizer(path)
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (2, 1, 0, 3)
  assert tok.chat_template.startswith("{{ bos_token }}") and tok.add_bos_default
  for text in SAMPLES:
    assert tok.encode(text, add_bos=False) == model.encode(text), text
    assert tok.decode(model.encode(text)) == model.decode(model.encode(text))
  assert tok.encode("<bos>x", add_bos=False)[0] != 2  # CONTROL: never matched inside text


def test_metadata_reader_equals_gguf_reader(small_spm):
  _, path = small_spm
  ours = gt.read_metadata(path)
  reader = gguf.GGUFReader(path)
  theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
  assert sorted(ours) == sorted(theirs)
  for key, value in theirs.items():
    mine = ours[key]
    assert (list(mine) if isinstance(mine, np.ndarray) else mine) == value, key
  # An open reader (the checkpoint converter has one) gives the same tokenizer as the path.
  tok, ref = gt.tokenizer_from_gguf(reader), gt.tokenizer_from_gguf(path)
  assert tok.path == path and tok.impl.serialized_model_proto() == ref.impl.serialized_model_proto()
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (ref.bos_id, ref.eos_id, 0, 3)
  assert tok.chat_template == ref.chat_template and tok.add_bos_default == ref.add_bos_default


def test_a_small_byte_level_gguf(tmp_path):
  """Control tokens are special and matched in text, user-defined ones matched, digits split alone
  (`smollm`), and a token llama.cpp wrote in plain text is respelled in the byte alphabet."""
  tokens = ["<|end|>", "<tool>", "a", "b", "ab", "\u0120", "1", "2", "12", "\u010a", "\n\n"]
  path = _write_gguf(
      tmp_path / "bpe.gguf",
      tokenizer_model="gpt2",
      tokenizer_pre="smollm",
      token_list=tokens,
      token_types=[3, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1],
      token_merges=["a b", "1 2"],
      eos_token_id=0,
  )
  tok = gt.tokenizer_from_gguf(path)
  assert tok.encode("ab<|end|>a b<tool>12", add_bos=False) == [4, 0, 2, 5, 3, 1, 6, 7]
  assert tok.token_to_id("\u010a\u010a") == 10  # "\n\n" respelled
  assert tok.decode([4, 0, 2], skip_special=False) == "ab<|end|>a"
  assert tok.bos_id is None and tok.pad_id == 0 and tok.add_bos_default is False


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"tokenizer_model": "bert"}, "GGUF tokenizer model 'bert' is not supported"),
        ({}, "GGUF tokenizer model None is not supported"),
        (
            {
                "tokenizer_model": "gpt2",
                "tokenizer_pre": "no-such-pre",
                "token_list": ["a", "b", "ab"],
                "token_merges": ["a b"],
                "eos_token_id": 0,
            },
            "tokenizer.ggml.pre='no-such-pre' is not supported",
        ),
        (
            {"tokenizer_model": "gpt2", "token_list": ["a", "b"], "eos_token_id": 0},
            "GGUF metadata 'tokenizer.ggml.merges' is missing",
        ),
        (
            {"tokenizer_model": "llama", "token_list": ["a", "b"], "token_scores": [0.0]},
            "tokenizer.ggml.scores has 1 entries for 2 tokens",
        ),
    ],
)
def test_bad_gguf_is_one_error_naming_the_file(tmp_path, fields, message):
  path = _write_gguf(tmp_path / "bad.gguf", **fields)
  with pytest.raises(ValueError) as e:
    gt.tokenizer_from_gguf(path)
  assert str(e.value).startswith(f"{path}: ") and message in str(e.value)
  assert "\n" not in str(e.value)


def test_truncated_or_foreign_file_is_one_error(tmp_path, small_spm):
  _, path = small_spm
  with open(path, "rb") as f:
    head = f.read(200)
  (tmp_path / "cut.gguf").write_bytes(head)
  (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04 zip")
  for name, message in (("cut.gguf", "truncated or corrupt"), ("not.gguf", "not a GGUF file")):
    with pytest.raises(ValueError, match=message) as e:
      gt.tokenizer_from_gguf(str(tmp_path / name))
    assert str(tmp_path / name) in str(e.value)


def test_a_missing_cached_model_names_the_fetch_command(monkeypatch, tmp_path):
  monkeypatch.setattr(released, "CACHE", tmp_path)
  with pytest.raises(FileNotFoundError, match="make models"):
    released.path(released.GEMMA3_270M)
