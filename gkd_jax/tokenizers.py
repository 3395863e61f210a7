"""Tokenizers: sentencepiece `tokenizer.model` (Gemma) or `tokenizer.json` (Llama/Qwen), chat formats.

`load_tokenizer(path)` takes a checkpoint directory (or a tokenizer file) and returns a `Tokenizer` with
one small interface whatever the backend:

  tok.encode(text, add_bos=True) -> list[int]    # never appends EOS; BOS only if asked and defined
  tok.decode(ids) -> str                          # special tokens (BOS/EOS/pad) dropped by default;
                                                  # it does NOT stop at EOS: the caller cuts there
  tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size, tok.stop_ids

Special ids come from, in this order of preference: `tokenizer_config.json` (token strings such as
"<eos>"), `generation_config.json`, `config.json` (`*_token_id`), and finally the tokenizer model itself.
A model without a pad token (Llama 3) pads with its EOS id: padded positions are always masked anyway.
`stop_ids` holds every EOS id the checkpoint declares (Llama 3 instruct lists three, Gemma two) so that a
sampler can stop on any of them; `eos_id` is the preferred one (the first found).

`apply_chat_template(messages, family)` renders the three instruction formats as plain strings WITHOUT
the leading BOS: encode the result with `add_bos=True`. (The BOS control symbol is not matched inside text
by sentencepiece, so leaving it out of the string is the only way that works for both backends.)
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
CHAT_FAMILIES = ("gemma", "llama3", "chatml", "qwen2.5")
_FAMILY_ALIASES = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3_text": "gemma",
    "llama": "llama3",
    "llama3": "llama3",
    "chatml": "chatml",
    "qwen3": "chatml",
    "qwen": "qwen2.5",
    "qwen2": "qwen2.5",
    "qwen2.5": "qwen2.5",
}
# What Qwen 2/2.5 instruct templates insert when a conversation has no system message.
QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


class Tokenizer:
  """One tokenizer behind a backend-independent interface (see the module docstring)."""

  # Defaults for instances unpickled from before these attributes existed.
  chat_template: Optional[str] = None
  add_bos_default: bool = True
  unk_id: Optional[int] = None

  def __init__(
      self,
      backend: str,
      impl: Any,
      *,
      bos_id: Optional[int],
      eos_id: int,
      pad_id: int,
      stop_ids: Sequence[int] = (),
      path: str = "",
      chat_template: Optional[str] = None,
      add_bos_default: bool = True,
      unk_id: Optional[int] = None,
  ):
    self.backend = backend  # "sentencepiece" | "tokenizers"
    self.impl = impl  # the SentencePieceProcessor or tokenizers.Tokenizer
    self.bos_id = bos_id
    self.eos_id = int(eos_id)
    self.pad_id = int(pad_id)
    self.unk_id = None if unk_id is None else int(unk_id)
    self.stop_ids = tuple(dict.fromkeys([self.eos_id, *[int(i) for i in stop_ids]]))
    self.path = path
    self.chat_template = chat_template or None  # the checkpoint's own Jinja chat template
    self.add_bos_default = bool(add_bos_default)  # add_bos_token: what encode(add_bos=None) does

  @property
  def vocab_size(self) -> int:
    if self.backend == "sentencepiece":
      return int(self.impl.get_piece_size())
    return int(self.impl.get_vocab_size(with_added_tokens=True))

  def encode(self, text: str, add_bos: Optional[bool] = True) -> list[int]:
    """Token ids of `text`; a BOS first when `add_bos` and the tokenizer has one. Never adds EOS.

    `add_bos=None` follows the checkpoint (`add_bos_default`: its add_bos_token setting)."""
    if add_bos is None:
      add_bos = self.add_bos_default
    if self.backend == "sentencepiece":
      ids = list(self.impl.encode(text))
    else:
      ids = list(self.impl.encode(text, add_special_tokens=False).ids)
    if add_bos and self.bos_id is not None:
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    """Text of `ids` (all of them: cut at EOS before calling). Special tokens dropped by default."""
    ids = [int(i) for i in ids]
    if skip_special:
      special = {self.bos_id, self.eos_id, self.pad_id}
      ids = [i for i in ids if i not in special]
    if self.backend == "sentencepiece":
      return self.impl.decode(ids)
    return self.impl.decode(ids, skip_special_tokens=skip_special)

  def token_to_id(self, token: str) -> Optional[int]:
    """Id of one token string, or None when it is not a single token of the vocabulary."""
    if self.backend == "sentencepiece":
      i = self.impl.piece_to_id(token)
      return None if i == self.impl.unk_id() and token != self.impl.id_to_piece(i) else int(i)
    i = self.impl.token_to_id(token)
    return None if i is None else int(i)

  def id_to_token(self, i: int) -> str:
    if self.backend == "sentencepiece":
      return self.impl.id_to_piece(int(i))
    return self.impl.id_to_token(int(i))

  def __getstate__(self):
    """Picklable (Grain worker processes get a copy): the backend travels as its serialized form."""
    state = dict(self.__dict__)
    if self.backend == "sentencepiece":
      state["impl"] = self.impl.serialized_model_proto()
    else:
      state["impl"] = self.impl.to_str()
    return state

  def __setstate__(self, state):
    state = dict(state)
    if state["backend"] == "sentencepiece":
      import sentencepiece as spm  # pylint: disable=import-outside-toplevel

      state["impl"] = spm.SentencePieceProcessor(model_proto=state["impl"])
    else:
      import tokenizers  # pylint: disable=import-outside-toplevel

      state["impl"] = tokenizers.Tokenizer.from_str(state["impl"])
    self.__dict__.update(state)

  def __repr__(self):
    return (
        f"Tokenizer({self.backend}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
        f"eos_id={self.eos_id}, pad_id={self.pad_id}, path={self.path!r})"
    )


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _token_string(value) -> Optional[str]:
  """tokenizer_config.json stores special tokens as a string or as {"content": ...}."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) and value else None


def _as_id_list(value) -> list[int]:
  if value is None:
    return []
  if isinstance(value, (list, tuple)):
    return [int(v) for v in value]
  return [int(value)]


def _find_file(path: str) -> tuple[str, str]:
  """(tokenizer file, directory holding the json configs) for a directory or a file path."""
  path = os.fspath(path)
  if os.path.isdir(path):
    for name in TOKENIZER_FILES:
      candidate = os.path.join(path, name)
      if os.path.isfile(candidate):
        return candidate, path
    raise FileNotFoundError(f"no {' or '.join(TOKENIZER_FILES)} in {path}")
  if os.path.isfile(path):
    return path, os.path.dirname(os.path.abspath(path))
  raise FileNotFoundError(f"tokenizer path {path} does not exist")


def _special_ids(lookup, model_ids: dict, config_dir: str) -> dict:
  """bos/eos/pad ids and all stop ids, by the preference order of the module docstring."""
  tok_cfg = _read_json(os.path.join(config_dir, "tokenizer_config.json"))
  gen_cfg = _read_json(os.path.join(config_dir, "generation_config.json"))
  model_cfg = _read_json(os.path.join(config_dir, "config.json"))
  model_cfg = {**model_cfg.get("text_config", {}), **model_cfg}  # multimodal configs nest it
  found, stops = {}, []
  for kind in ("bos", "eos", "pad"):
    candidates = []
    token = _token_string(tok_cfg.get(f"{kind}_token"))
    if token is not None and lookup(token) is not None:
      candidates.append([lookup(token)])
    for cfg in (gen_cfg, model_cfg):
      candidates.append(_as_id_list(cfg.get(f"{kind}_token_id")))
    candidates.append(_as_id_list(model_ids.get(kind)))
    candidates = [c for c in candidates if c]
    found[kind] = candidates[0][0] if candidates else None
    if kind == "eos":
      stops = [i for c in candidates for i in c]
  if found["eos"] is None:
    raise ValueError(
        f"tokenizer in {config_dir}: no EOS token found in tokenizer_config.json, "
        "generation_config.json, config.json or the tokenizer model"
    )
  if found["pad"] is None:
    found["pad"] = found["eos"]
  return {"bos_id": found["bos"], "eos_id": found["eos"], "pad_id": found["pad"], "stop_ids": stops}


def chat_template_of(config_dir: str) -> Optional[str]:
  """A HF checkpoint's own chat template: `chat_template.jinja`, else tokenizer_config.json's
  `chat_template` (a string, or a list of {name, template} of which "default" is used); None if
  it has none."""
  jinja = os.path.join(config_dir, "chat_template.jinja")
  if os.path.isfile(jinja):
    with open(jinja, encoding="utf-8") as f:
      return f.read() or None
  config_file = os.path.join(config_dir, "tokenizer_config.json")
  template = _read_json(config_file).get("chat_template")
  if isinstance(template, list):
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    if "default" not in named:
      raise ValueError(
          f"{config_file}: chat_template is a list without a 'default' entry (names: "
          f"{sorted(str(n) for n in named)})"
      )
    template = named["default"]
  if template is not None and not isinstance(template, str):
    raise ValueError(
        f"{config_file}: chat_template must be a string or a list of {{name, template}}"
    )
  return template or None


def _add_bos_default(config_dir: str) -> bool:
  """tokenizer_config.json's add_bos_token (True when absent: BOS was always added before)."""
  value = _read_json(os.path.join(config_dir, "tokenizer_config.json")).get("add_bos_token", True)
  return bool(value)


def load_tokenizer(path: str) -> Tokenizer:
  """Loads `tokenizer.model` (preferred) or `tokenizer.json` from a checkpoint dir, a tokenizer
  file, or a `.gguf` file (see gkd_jax.gguf_tokenizer)."""
  if str(path).endswith(".gguf") and os.path.isfile(path):
    from gkd_jax import gguf_tokenizer  # pylint: disable=import-outside-toplevel

    return gguf_tokenizer.tokenizer_from_gguf(path)
  file, config_dir = _find_file(path)
  if file.endswith(".json"):
    import tokenizers  # pylint: disable=import-outside-toplevel

    impl = tokenizers.Tokenizer.from_file(file)
    lookup = impl.token_to_id
    model_ids = {}
    backend = "tokenizers"
  else:
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel

    impl = spm.SentencePieceProcessor(model_file=file)
    unk = impl.unk_id()
    lookup = lambda t: (
        None if impl.piece_to_id(t) == unk and impl.id_to_piece(unk) != t else impl.piece_to_id(t)
    )
    model_ids = {
        k: v
        for k, v in (("bos", impl.bos_id()), ("eos", impl.eos_id()), ("pad", impl.pad_id()))
        if v >= 0
    }
    backend = "sentencepiece"
  ids = _special_ids(lookup, model_ids, config_dir)
  unk = _token_string(
      _read_json(os.path.join(config_dir, "tokenizer_config.json")).get("unk_token")
  )
  unk_id = lookup(unk) if unk is not None else None
  if unk_id is None and backend == "sentencepiece":
    unk_id = impl.unk_id()
  return Tokenizer(
      backend,
      impl,
      path=file,
      chat_template=chat_template_of(config_dir),
      add_bos_default=_add_bos_default(config_dir),
      unk_id=unk_id,
      **ids,
  )


def _token_text(tokenizer: Tokenizer, i: Optional[int]) -> Optional[str]:
  return None if i is None else tokenizer.id_to_token(i)


def save_tokenizer(tokenizer: Tokenizer, folder: str) -> None:
  """Writes a tokenizer as a HF checkpoint's tokenizer files, which load_tokenizer and
  transformers' AutoTokenizer both read back to the same ids.

  `tokenizer.model` (sentencepiece; class GemmaTokenizer, or LlamaTokenizer when the model adds a
  dummy prefix) or `tokenizer.json` (PreTrainedTokenizerFast), plus `tokenizer_config.json` (special
  token strings, add_bos_token, chat_template) and `special_tokens_map.json`."""
  os.makedirs(folder, exist_ok=True)
  specials = {
      f"{kind}_token": _token_text(tokenizer, getattr(tokenizer, f"{kind}_id"))
      for kind in ("bos", "eos", "unk", "pad")
  }
  specials = {k: v for k, v in specials.items() if v is not None}
  if tokenizer.backend == "sentencepiece":
    proto = tokenizer.impl.serialized_model_proto()
    with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
      f.write(proto)
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel

    model = sentencepiece_model_pb2.ModelProto.FromString(proto)
    cls = "LlamaTokenizer" if model.normalizer_spec.add_dummy_prefix else "GemmaTokenizer"
  else:
    tokenizer.impl.save(os.path.join(folder, "tokenizer.json"))
    cls = "PreTrainedTokenizerFast"
  config = {
      "tokenizer_class": cls,
      **specials,
      "add_bos_token": tokenizer.add_bos_default and tokenizer.bos_id is not None,
      "add_eos_token": False,
      "clean_up_tokenization_spaces": False,
  }
  if tokenizer.chat_template:
    config["chat_template"] = tokenizer.chat_template
  for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", specials)):
    with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2, ensure_ascii=False)


def has_tokenizer(path: str) -> bool:
  """Whether a checkpoint directory ships tokenizer files of its own."""
  return bool(path) and any(os.path.isfile(os.path.join(path, n)) for n in TOKENIZER_FILES)


def vocabulary_difference(a: Tokenizer, b: Tokenizer) -> Optional[str]:
  """None when both tokenizers give every id the same token string; else the first difference."""
  if a.vocab_size != b.vocab_size:
    return f"{a.vocab_size} vs {b.vocab_size} tokens"
  for i in range(a.vocab_size):
    ta, tb = a.id_to_token(i), b.id_to_token(i)
    if ta != tb:
      return f"id {i} is {ta!r} vs {tb!r}"
  return None


def chat_family(name: str) -> str:
  """Canonical chat family (one of CHAT_FAMILIES) for a family or HF model_type name."""
  family = _FAMILY_ALIASES.get(str(name).lower())
  if family is None:
    raise ValueError(f"unknown chat family {name!r}; choose one of {sorted(_FAMILY_ALIASES)}")
  return family


def _check_messages(messages) -> None:
  if not isinstance(messages, (list, tuple)) or not messages:
    raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
  for i, m in enumerate(messages):
    if (
        not isinstance(m, dict)
        or not isinstance(m.get("role"), str)
        or not isinstance(m.get("content"), str)
    ):
      raise ValueError(f"messages[{i}] must be a dict with string 'role' and 'content', got {m!r}")
    if m["role"] not in ("system", "user", "assistant"):
      raise ValueError(f"messages[{i}].role={m['role']!r}; allowed: system, user, assistant")


def apply_chat_template(
    messages: Sequence[dict], family: str, add_generation_prompt: bool = True
) -> str:
  """Renders a conversation in a family's instruction format, without the leading BOS.

  gemma:   "<start_of_turn>user\\n{u}<end_of_turn>\\n<start_of_turn>model\\n{a}<end_of_turn>\\n" with
           contents trimmed; a leading system message becomes a "{system}\\n\\n" prefix of the first
           turn (Gemma 3's template; Gemma 2's refuses system messages).
  llama3:  "<|start_header_id|>{role}<|end_header_id|>\\n\\n{content trimmed}<|eot_id|>" per message
           (the Llama 3 template; Llama 3.1+ templates also insert a dated system header, not
           rendered here: pass it as a system message when distilling from those models).
  chatml:  "<|im_start|>{role}\\n{content}<|im_end|>\\n" per message (Qwen 3 prompts, ChatML models).
  qwen2.5: chatml, with Qwen's default system message when the conversation has none.
  With `add_generation_prompt` the opening of an assistant turn follows, ready for sampling. The
  result equals the checkpoints' Jinja templates minus the BOS (tests/fixtures/chat_templates).
  """
  _check_messages(messages)
  family = chat_family(family)
  out = []
  if family == "gemma":
    messages = list(messages)
    prefix = ""
    if messages[0]["role"] == "system":
      prefix = messages[0]["content"] + "\n\n"
      messages = messages[1:]
    for i, m in enumerate(messages):
      if m["role"] == "system":
        raise ValueError("gemma: a system message is only allowed first")
      role = "model" if m["role"] == "assistant" else "user"
      out.append(
          f"<start_of_turn>{role}\n{prefix if i == 0 else ''}{m['content'].strip()}"
          "<end_of_turn>\n"
      )
    if add_generation_prompt:
      out.append("<start_of_turn>model\n")
  elif family == "llama3":
    for m in messages:
      out.append(
          f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n" f"{m['content'].strip()}<|eot_id|>"
      )
    if add_generation_prompt:
      out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
  else:
    if family == "qwen2.5" and messages[0]["role"] != "system":
      messages = [{"role": "system", "content": QWEN25_DEFAULT_SYSTEM}] + list(messages)
    for m in messages:
      out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    if add_generation_prompt:
      out.append("<|im_start|>assistant\n")
  return "".join(out)


def end_of_turn_token(family: str) -> str:
  """The token that closes an assistant turn in `family` (a completion's natural EOS in chat data)."""
  return {
      "gemma": "<end_of_turn>",
      "llama3": "<|eot_id|>",
      "chatml": "<|im_end|>",
      "qwen2.5": "<|im_end|>",
  }[chat_family(family)]
