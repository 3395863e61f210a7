"""Tokenizers from a GGUF file's metadata (llama.cpp's `tokenizer.ggml.*` keys).

  tok = tokenizer_from_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")   # a gkd_jax.tokenizers.Tokenizer

A GGUF file carries no tokenizer file, only the vocabulary and what llama.cpp needs to run it. Two
tokenizer models (`tokenizer.ggml.model`) are rebuilt:

- `llama` (sentencepiece; Gemma, Llama 2): a sentencepiece ModelProto of the tokens, scores and
  token types: a BPE model with byte fallback, identity normalisation, whitespace escaped as "▁",
  no extra-whitespace removal and a dummy prefix only when `add_space_prefix` says so (Gemma: no).
  llama.cpp marks every special token CONTROL and writes user-defined pieces with real spaces; the
  proto undoes both so that sentencepiece behaves as the model's own `tokenizer.model`: BOS, EOS and
  pad stay CONTROL (never matched inside text), the unknown token is UNKNOWN, and every other
  control token (`<start_of_turn>`, `<unused0>`, `<mask>`) becomes USER_DEFINED, matched whole in
  text as transformers and llama.cpp match it. `tok.impl.serialized_model_proto()` is the
  `tokenizer.model` file.
- `gpt2` (byte-level BPE; SmolLM2, Llama 3, Qwen): a `tokenizers` BPE of the vocabulary and merges,
  with the pre-tokenizer llama.cpp applies for the file's `tokenizer.ggml.pre` (SmolLM2's `smollm`:
  each digit alone, then GPT-2's split) and a ByteLevel decoder; CONTROL tokens are special added
  tokens and USER_DEFINED ones plain added tokens, so `<|im_start|>` in text is one token.

Special ids, whether BOS is added by default and the chat template come from the metadata. Any other
tokenizer model, or an unknown `pre`, is one ValueError naming the file. The metadata is read
straight from the file's key/value section (well under a second for Gemma's 262144 tokens, where
gguf.GGUFReader parses the whole file); a GGUFReader already open may be passed instead.
"""

from __future__ import annotations

import os
import struct
from typing import Any, Union

import numpy as np

from gkd_jax import tokenizers as tok_lib

# GGUF token types (llama.cpp's llama_token_type; the same numbers as sentencepiece's).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MODELS = ("llama", "gpt2")

# tokenizer.ggml.pre -> the regex llama.cpp splits with before byte-level BPE, None for GPT-2's own
# (which tokenizers' ByteLevel pre-tokenizer applies). "digits" isolates every digit first.
_GPT2 = None
_DIGITS = "digits"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {
    "default": _GPT2,
    "gpt2": _GPT2,
    "smollm": _DIGITS,
    "starcoder": _DIGITS,
    "refact": _DIGITS,
    "llama-bpe": _LLAMA3,
    "llama3": _LLAMA3,
    "qwen2": _QWEN2,
}

_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9


# ------------------------------------------------------------------------------------- metadata


class _Cursor:
  """Reads GGUF values from a byte buffer, little- or big-endian."""

  def __init__(self, buf: bytes, order: str, path: str):
    self.buf, self.order, self.path, self.pos = buf, order, path, 0

  def scalar(self, code: str):
    fmt = self.order + code
    (value,) = struct.unpack_from(fmt, self.buf, self.pos)
    self.pos += struct.calcsize(fmt)
    return value

  def string(self) -> str:
    n = self.scalar("Q")
    raw = self.buf[self.pos : self.pos + n]
    if len(raw) != n:
      raise struct.error("string runs past the end")
    self.pos += n
    return raw.decode("utf-8", errors="replace")

  def value(self, kind: int) -> Any:
    if kind == _STRING:
      return self.string()
    if kind == _ARRAY:
      item, n = self.scalar("I"), self.scalar("Q")
      if item in _SCALARS:
        dtype = np.dtype(self.order + _SCALARS[item])
        out = np.frombuffer(self.buf, dtype, n, self.pos)
        self.pos += n * dtype.itemsize
        return out
      return [self.value(item) for _ in range(n)]
    if kind not in _SCALARS:
      raise ValueError(f"{self.path}: GGUF value type {kind} is unknown")
    return self.scalar(_SCALARS[kind])


def read_metadata(path: Union[str, os.PathLike]) -> dict[str, Any]:
  """Every metadata key of a GGUF file -> its value (numeric arrays as numpy arrays).

  Reads only the header and the key/value section, not the tensors."""
  path = str(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GGUF file {path!r} does not exist")
  with open(path, "rb") as f:
    if f.read(4) != b"GGUF":
      raise ValueError(f"{path}: not a GGUF file (no GGUF magic)")
    f.seek(0)
    buf = f.read()  # the key/value section is most of a tokenizer; tensors are mapped, not read
  (version,) = struct.unpack_from("<I", buf, 4)
  order = "<" if version & 0xFFFF else ">"  # a big-endian file's version reads as N << 24
  cursor = _Cursor(buf, order, path)
  cursor.pos = 8
  try:
    cursor.scalar("Q")  # tensor count
    out = {}
    for _ in range(cursor.scalar("Q")):
      key = cursor.string()
      out[key] = cursor.value(cursor.scalar("I"))
  except (struct.error, ValueError, MemoryError) as e:
    raise ValueError(f"{path}: truncated or corrupt GGUF metadata ({e})") from None
  return out


def _reader_metadata(reader) -> dict[str, Any]:
  """The tokenizer keys (and the architecture) of an open gguf.GGUFReader, as plain values."""
  out = {}
  for key, field in reader.fields.items():
    if key.startswith("tokenizer.") or key == "general.architecture":
      out[key] = field.contents()
  return out


def _metadata(reader_or_path) -> tuple[dict[str, Any], str]:
  """(metadata, the file's name for error messages) of a path or a gguf.GGUFReader."""
  if isinstance(reader_or_path, (str, os.PathLike)):
    return read_metadata(reader_or_path), str(reader_or_path)
  if hasattr(reader_or_path, "fields"):
    name = getattr(getattr(reader_or_path, "data", None), "filename", None) or "GGUF reader"
    return _reader_metadata(reader_or_path), str(name)
  raise ValueError(f"expected a GGUF path or gguf.GGUFReader, got {type(reader_or_path).__name__}")


def _require(md: dict, source: str, key: str) -> Any:
  if key not in md:
    raise ValueError(f"{source}: GGUF metadata {key!r} is missing")
  return md[key]


def _optional_id(md: dict, key: str):
  value = md.get(f"tokenizer.ggml.{key}")
  return None if value is None else int(value)


def _token_types(md: dict, source: str, n: int) -> np.ndarray:
  types = np.asarray(md.get("tokenizer.ggml.token_type", np.full(n, NORMAL)), np.int64)
  if types.shape != (n,):
    raise ValueError(f"{source}: tokenizer.ggml.token_type has {types.size} entries for {n} tokens")
  return types


# ------------------------------------------------------------------------------ sentencepiece


def sentencepiece_proto(reader_or_path) -> bytes:
  """The serialized sentencepiece ModelProto (a `tokenizer.model`) of a `llama`-model GGUF file."""
  md, source = _metadata(reader_or_path)
  return _sentencepiece_proto(md, source)


def _sentencepiece_proto(md: dict, source: str) -> bytes:
  from sentencepiece import sentencepiece_model_pb2 as pb  # pylint: disable=import-outside-toplevel

  tokens = list(_require(md, source, "tokenizer.ggml.tokens"))
  n = len(tokens)
  scores = np.asarray(md.get("tokenizer.ggml.scores", np.zeros(n)), np.float32)
  types = _token_types(md, source, n)
  if scores.shape != (n,):
    raise ValueError(f"{source}: tokenizer.ggml.scores has {scores.size} entries for {n} tokens")
  ids = {k: _optional_id(md, f"{k}_token_id") for k in ("bos", "eos", "padding", "unknown")}
  unk = ids["unknown"]
  if unk is None:
    unk = next((i for i in range(n) if types[i] == UNKNOWN), None)
  if unk is None or not 0 <= unk < n:
    raise ValueError(f"{source}: a sentencepiece vocabulary needs an unknown token id")
  control = {i for k, i in ids.items() if i is not None and k != "unknown"}
  piece = pb.ModelProto.SentencePiece
  spm_type = {CONTROL: piece.USER_DEFINED, USER_DEFINED: piece.USER_DEFINED, UNUSED: piece.UNUSED}
  spm_type[BYTE] = piece.BYTE
  model = pb.ModelProto()
  add = model.pieces.add
  for i, (text, kind, score) in enumerate(zip(tokens, types.tolist(), scores.tolist())):
    if i == unk:
      add(piece=text, score=score, type=piece.UNKNOWN)
    elif i in control:
      add(piece=text, score=score, type=piece.CONTROL)
    elif spm_type.get(kind) == piece.USER_DEFINED:
      # llama.cpp wrote user-defined pieces with spaces where sentencepiece holds "▁".
      add(piece=text.replace(" ", "\u2581"), score=score, type=piece.USER_DEFINED)
    else:
      add(piece=text, score=score, type=spm_type.get(kind, piece.NORMAL))
  trainer = model.trainer_spec
  trainer.model_type = pb.TrainerSpec.BPE
  trainer.vocab_size = n
  trainer.byte_fallback = bool(np.any(types == BYTE))
  trainer.split_digits = True
  trainer.allow_whitespace_only_pieces = True
  trainer.unk_id, trainer.unk_piece = unk, tokens[unk]
  for kind, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
    i = ids[key]
    setattr(trainer, f"{kind}_id", -1 if i is None else i)
    if i is not None:
      setattr(trainer, f"{kind}_piece", tokens[i])
  norm = model.normalizer_spec
  norm.name = "identity"
  norm.add_dummy_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
  norm.remove_extra_whitespaces = bool(md.get("tokenizer.ggml.remove_extra_whitespaces", False))
  norm.escape_whitespaces = True
  return model.SerializeToString()


# ---------------------------------------------------------------------------------- byte-level


def _byte_level_alphabet() -> dict[int, str]:
  """GPT-2's byte -> printable character table (what byte-level vocabularies are spelled in)."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
  keep += range(ord("®"), ord("ÿ") + 1)
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def _pre_tokenizer(pre: str, source: str):
  """The tokenizers pre-tokenizer of llama.cpp's `tokenizer.ggml.pre` name."""
  from tokenizers import Regex, pre_tokenizers  # pylint: disable=import-outside-toplevel

  if pre not in PRE_TOKENIZERS:
    raise ValueError(
        f"{source}: tokenizer.ggml.pre={pre!r} is not supported (supported: "
        f"{', '.join(sorted(PRE_TOKENIZERS))})"
    )
  split = PRE_TOKENIZERS[pre]
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split is None)
  if split is None:
    return byte_level
  if split == _DIGITS:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
  return pre_tokenizers.Sequence(
      [pre_tokenizers.Split(Regex(split), behavior="isolated"), byte_level]
  )


def _byte_level_bpe(md: dict, source: str):
  """The tokenizers.Tokenizer of a `gpt2`-model GGUF file."""
  import tokenizers  # pylint: disable=import-outside-toplevel

  tokens = list(_require(md, source, "tokenizer.ggml.tokens"))
  types = _token_types(md, source, len(tokens))
  spelling = _byte_level_alphabet()
  alphabet = set(spelling.values())
  # llama.cpp writes a token whose bytes are not UTF-8 back in plain text; respell it.
  vocab = {}
  for i, t in enumerate(tokens):
    spelled = t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))
    vocab.setdefault(spelled, i)
  merges = []
  for m in _require(md, source, "tokenizer.ggml.merges"):
    pair = m.split(" ")
    if len(pair) != 2:
      raise ValueError(f"{source}: tokenizer.ggml.merges entry {m!r} is not two tokens")
    merges.append(tuple(pair))
  tok = tokenizers.Tokenizer(
      tokenizers.models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False)
  )
  tok.pre_tokenizer = _pre_tokenizer(str(md.get("tokenizer.ggml.pre", "default")), source)
  tok.decoder = tokenizers.decoders.ByteLevel()
  control = [t for t, k in zip(tokens, types) if k == CONTROL and set(t) <= alphabet]
  user = [t for t, k in zip(tokens, types) if k == USER_DEFINED and t in vocab]
  tok.add_special_tokens(
      [tokenizers.AddedToken(t, special=True, normalized=False) for t in control]
  )
  tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in user])
  return tok


# ------------------------------------------------------------------------------------- builder


def tokenizer_from_gguf(reader_or_path) -> tok_lib.Tokenizer:
  """A gkd_jax Tokenizer equal to the one a GGUF file describes (see the module docstring)."""
  md, source = _metadata(reader_or_path)
  model = md.get("tokenizer.ggml.model")
  if model not in MODELS:
    raise ValueError(
        f"{source}: GGUF tokenizer model {model!r} is not supported (supported: "
        f"{', '.join(MODELS)})"
    )
  if model == "llama":
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel

    impl = spm.SentencePieceProcessor(model_proto=_sentencepiece_proto(md, source))
    backend = "sentencepiece"
  else:
    impl = _byte_level_bpe(md, source)
    backend = "tokenizers"
  eos = _optional_id(md, "eos_token_id")
  if eos is None:
    raise ValueError(f"{source}: GGUF metadata 'tokenizer.ggml.eos_token_id' is missing")
  pad = _optional_id(md, "padding_token_id")
  stops = [_optional_id(md, k) for k in ("eot_token_id", "eom_token_id")]
  return tok_lib.Tokenizer(
      backend,
      impl,
      bos_id=_optional_id(md, "bos_token_id"),
      eos_id=eos,
      pad_id=eos if pad is None else pad,
      unk_id=_optional_id(md, "unknown_token_id"),
      stop_ids=[i for i in stops if i is not None],
      path=source,
      chat_template=md.get("tokenizer.chat_template") or None,
      add_bos_default=bool(md.get("tokenizer.ggml.add_bos_token", model == "llama")),
  )
