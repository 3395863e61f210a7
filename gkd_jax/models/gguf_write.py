"""GGUF files out: a model, its params and its tokenizer as one file llama.cpp/Ollama (and
transformers' GGUF loader) read.

  save_gguf("student.gguf", model, params, tokenizer, qtype="q8_0")

The inverse of models/gguf.py: llama.cpp's conventions are redone (Llama q/k rows permuted, Gemma
norm weights stored as 1 + w, no `output.weight` when the embedding is tied). Tensor types:
`f32`, `f16`, `bf16`, or `q8_0` (2-D weights whose rows are a multiple of 32 values; 1-D norms stay
F32, as llama.cpp keeps them). Only what GGUF metadata can say is written, so a Gemma 3 whose
local RoPE base, sliding pattern or query scale differ from Gemma 3's (which llama.cpp assumes) is
refused rather than written wrong. The file is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from gkd_jax.models import gguf as gguf_in
from gkd_jax.models.config import ModelConfig

QTYPES = ("f32", "f16", "bf16", "q8_0")
_ARCH = {v: k for k, v in gguf_in.ARCHITECTURES.items()}  # model_type -> GGUF architecture
_FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}  # llama.cpp's LLAMA_FTYPE_* values


def check_writable(c: ModelConfig) -> None:
  """ValueError naming what GGUF metadata cannot carry for this config."""
  if c.model_type not in _ARCH:
    raise ValueError(
        f"cannot write GGUF: model_type {c.model_type!r} is not one of {sorted(_ARCH)}"
    )
  if c.model_type == "gemma3_text":
    pattern = tuple(
        "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(c.num_layers)
    )
    fixed = {
        "layer_types (GGUF assumes Gemma 3's 5 sliding : 1 global pattern)": c.layer_types
        == pattern,
        "rope_local_theta (GGUF assumes 10000)": c.rope_local_theta in (None, 10000.0),
        "query_pre_attn_scalar (GGUF assumes head_dim)": c.query_pre_attn_scalar
        in (None, float(c.head_dim)),
        "final_logit_softcap (not in Gemma 3 GGUF)": c.final_logit_softcap is None,
    }
    bad = [k for k, ok in fixed.items() if not ok]
    if bad:
      raise ValueError(f"cannot write GGUF for this gemma3_text config: {'; '.join(bad)}")
  if c.rope_scaling is not None and c.rope_scaling.rope_type != "linear":
    raise ValueError(f"cannot write GGUF: rope_scaling {c.rope_scaling.rope_type!r} is unsupported")


def _metadata(w, c: ModelConfig, arch: str) -> None:
  w.add_uint32(f"{arch}.context_length", c.max_position_embeddings)
  w.add_uint32(f"{arch}.embedding_length", c.embed_dim)
  w.add_uint32(f"{arch}.block_count", c.num_layers)
  w.add_uint32(f"{arch}.feed_forward_length", c.mlp_dim)
  w.add_uint32(f"{arch}.attention.head_count", c.num_heads)
  w.add_uint32(f"{arch}.attention.head_count_kv", c.num_kv_heads)
  w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c.norm_eps)
  w.add_float32(f"{arch}.rope.freq_base", c.rope_theta)
  if arch == "gemma3":
    w.add_uint32(f"{arch}.attention.key_length", c.head_dim)
    w.add_uint32(f"{arch}.attention.value_length", c.head_dim)
    w.add_uint32(f"{arch}.attention.sliding_window", c.sliding_window or 512)
  else:
    w.add_uint32(f"{arch}.vocab_size", c.vocab_size)
    w.add_uint32(f"{arch}.rope.dimension_count", c.head_dim)
  if c.rope_scaling is not None:
    w.add_string(f"{arch}.rope.scaling.type", "linear")
    w.add_float32(f"{arch}.rope.scaling.factor", c.rope_scaling.factor)


def _pre_tokenizer_name(spec: Optional[dict]) -> str:
  """llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json pre-tokenizer (what it can tell)."""
  if not spec:
    return "default"
  parts = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
  kinds = [(p.get("type"), p.get("individual_digits")) for p in parts]
  if kinds == [("Digits", True), ("ByteLevel", None)]:
    return "smollm"
  if kinds == [("ByteLevel", None)]:
    return "gpt2"
  return "default"


def tokenizer_metadata(tokenizer) -> dict[str, Any]:
  """The `tokenizer.ggml.*` fields of a gkd_jax Tokenizer (sentencepiece -> `llama`, byte-level
  BPE tokenizer.json -> `gpt2`), special ids and chat template included."""
  n = tokenizer.vocab_size
  out: dict[str, Any] = {}
  if tokenizer.backend == "sentencepiece":
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.impl.serialized_model_proto())
    out.update(
        model="llama",
        pre="default",
        tokens=[p.piece for p in proto.pieces],
        scores=[float(p.score) for p in proto.pieces],
        types=[int(p.type) for p in proto.pieces],  # sentencepiece's numbering is GGUF's
        add_space_prefix=bool(proto.normalizer_spec.add_dummy_prefix),
        unk=int(proto.trainer_spec.unk_id),
    )
  else:
    spec = json.loads(tokenizer.impl.to_str())
    if spec["model"].get("type") != "BPE":
      raise ValueError(
          f"cannot write GGUF: tokenizer model {spec['model'].get('type')!r} is not BPE"
      )
    tokens = [""] * n
    for token, i in spec["model"]["vocab"].items():
      tokens[i] = token
    types = [1] * n
    for added in spec.get("added_tokens", []):
      tokens[added["id"]] = added["content"]
      types[added["id"]] = 3 if added.get("special") else 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    out.update(
        model="gpt2",
        pre=_pre_tokenizer_name(spec.get("pre_tokenizer")),
        tokens=tokens,
        types=types,
        merges=merges,
        add_space_prefix=False,
    )
  out.update(bos=tokenizer.bos_id, eos=tokenizer.eos_id, pad=tokenizer.pad_id)
  out["add_bos"] = bool(getattr(tokenizer, "add_bos_default", tokenizer.bos_id is not None))
  out["chat_template"] = getattr(tokenizer, "chat_template", None)
  return out


def _tokenizer(w, t: dict[str, Any]) -> None:
  w.add_tokenizer_model(t["model"])
  w.add_tokenizer_pre(t["pre"])
  w.add_token_list(t["tokens"])
  if "scores" in t:
    w.add_token_scores(t["scores"])
  w.add_token_types(t["types"])
  if "merges" in t:
    w.add_token_merges(t["merges"])
  for key, add in (
      ("bos", w.add_bos_token_id),
      ("eos", w.add_eos_token_id),
      ("unk", w.add_unk_token_id),
      ("pad", w.add_pad_token_id),
  ):
    if t.get(key) is not None:
      add(int(t[key]))
  w.add_add_bos_token(t["add_bos"])
  w.add_add_eos_token(False)
  w.add_add_space_prefix(t["add_space_prefix"])
  if t.get("chat_template"):
    w.add_chat_template(t["chat_template"])


def gguf_tensors(model, params):
  """(GGUF name, float32 array in GGUF's layout) for every tensor, llama.cpp's changes redone."""
  from gkd_jax.models import hf  # pylint: disable=import-outside-toplevel

  c = model.config
  heads = {"self_attn.q_proj.weight": c.num_heads, "self_attn.k_proj.weight": c.num_kv_heads}
  shift = np.float32(gguf_in.norm_shift(c.model_type))
  for e in hf.tensor_plan(c):
    x = e.to_hf(np.asarray(hf._to_host(hf._get(params, e.path)), np.float32))
    suffix = e.hf_name.split(".", 3)[-1]
    if c.model_type == "llama" and suffix in heads:
      x = gguf_in.rope_permute(x, heads[suffix])
    if e.hf_name.endswith("norm.weight"):
      x = x + shift
    yield gguf_in.gguf_name(e.hf_name, c.model_type), x


def _encode(x: np.ndarray, qtype: str):
  """(data, raw GGML type or None) for one tensor at the requested type."""
  import gguf  # pylint: disable=import-outside-toplevel

  if x.ndim == 1 or qtype == "f32":
    return x.astype(np.float32), None
  if qtype == "f16":
    return x.astype(np.float16), None
  if qtype == "q8_0" and x.shape[-1] % 32:
    return x.astype(np.float16), None  # llama.cpp's fallback for rows Q8_0 cannot block
  t = gguf.GGMLQuantizationType.BF16 if qtype == "bf16" else gguf.GGMLQuantizationType.Q8_0
  return gguf.quants.quantize(x, t), t


def save_gguf(path, model, params, tokenizer, qtype: str = "f32", name: str = "") -> Path:
  """Writes `model`/`params`/`tokenizer` as one GGUF file at `path` (see the module docstring)."""
  import gguf  # pylint: disable=import-outside-toplevel

  if qtype not in QTYPES:
    raise ValueError(f"GGUF tensor type {qtype!r} must be one of {QTYPES}")
  c = model.config
  check_writable(c)
  tok = tokenizer_metadata(tokenizer)
  if len(tok["tokens"]) != c.vocab_size:
    raise ValueError(
        f"cannot write GGUF: the tokenizer has {len(tok['tokens'])} tokens, the model's "
        f"vocabulary {c.vocab_size}"
    )
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".partial")
  arch = _ARCH[c.model_type]
  w = gguf.GGUFWriter(tmp, arch)
  w.add_name(name or path.stem)
  w.add_file_type(_FILE_TYPE[qtype])
  w.add_quantization_version(gguf.GGML_QUANT_VERSION)
  _metadata(w, c, arch)
  _tokenizer(w, tok)
  for gname, x in gguf_tensors(model, params):
    data, raw = _encode(x, qtype)
    w.add_tensor(gname, data, raw_dtype=raw)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  os.replace(tmp, path)
  return path
