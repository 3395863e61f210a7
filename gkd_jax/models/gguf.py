"""GGUF files in (llama.cpp's format): metadata -> config.json dict, tensors -> HF-layout tensors.

  model, params = gkd_jax.load_pretrained("SmolLM2-135M-Instruct.Q4_1.gguf")

Two architectures are read, `gemma3` (as transformers' `gemma3_text`) and `llama`; any other is
one ValueError naming the file and the architecture. Every tensor is dequantised (any type the
`gguf` package dequantises: F32, F16, BF16, Q4_0 ... Q8_0, the K-quants, ...) to float32 and then
cast, one tensor at a time, through the same validated path as safetensors checkpoints.

llama.cpp changes three things when it writes a HuggingFace checkpoint as GGUF; all are undone here
(and redone by `gguf_write`):
- Llama's q and k projections have their rows permuted (RoPE's halves interleaved per head).
- Gemma's RMSNorm weights are stored as 1 + w (HF stores w and computes x * (1 + w)).
- A tied output projection is simply absent (no `output.weight`).
What a Gemma 3 GGUF does not record takes transformers' Gemma3TextConfig defaults, as
transformers' own GGUF loader does: the local RoPE base (10000), the 5:1 sliding pattern and
query_pre_attn_scalar (= head_dim, 256). The vocabulary size is the embedding's row count.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from gkd_jax.models.hf import TensorRef

ARCHITECTURES = {"gemma3": "gemma3_text", "llama": "llama"}

# HF name suffix (under model.layers.{i}.) -> GGUF name suffix (under blk.{i}.), per family.
_LAYER = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
LAYER_NAMES = {
    "llama": {**_LAYER, "post_attention_layernorm.weight": "ffn_norm.weight"},
    "gemma3_text": {
        **_LAYER,
        "self_attn.q_norm.weight": "attn_q_norm.weight",
        "self_attn.k_norm.weight": "attn_k_norm.weight",
        "post_attention_layernorm.weight": "post_attention_norm.weight",
        "pre_feedforward_layernorm.weight": "ffn_norm.weight",
        "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    },
}
GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(hf_name: str, model_type: str) -> str:
  """HF tensor name -> the GGUF tensor name llama.cpp gives it (KeyError if it has none)."""
  if hf_name in GLOBAL_NAMES:
    return GLOBAL_NAMES[hf_name]
  _, _, i, suffix = hf_name.split(".", 3)  # model.layers.{i}.{suffix}
  return f"blk.{i}.{LAYER_NAMES[model_type][suffix]}"


def hf_names(model_type: str, num_layers: int) -> dict[str, str]:
  """GGUF name -> HF name, for every tensor a checkpoint of this family and depth may hold."""
  out = {g: h for h, g in GLOBAL_NAMES.items()}
  for i in range(num_layers):
    for h, g in LAYER_NAMES[model_type].items():
      out[f"blk.{i}.{g}"] = f"model.layers.{i}.{h}"
  return out


def rope_permute(w: np.ndarray, n_heads: int, inverse: bool = False) -> np.ndarray:
  """llama.cpp's row order for a Llama q/k projection [n_heads * Dh, D] (inverse: back to HF's)."""
  half = w.shape[0] // n_heads // 2
  split = (n_heads, half, 2) if inverse else (n_heads, 2, half)
  return w.reshape(*split, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def norm_shift(model_type: str) -> float:
  """What llama.cpp adds to every RMSNorm weight of this family (Gemma: 1)."""
  return 1.0 if model_type.startswith("gemma") else 0.0


# ------------------------------------------------------------------------------------- reading


def open_gguf(path: Union[str, os.PathLike]):
  """A gguf.GGUFReader over `path`; a missing, truncated or corrupt file is one error naming it."""
  import gguf  # pylint: disable=import-outside-toplevel

  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader raises ValueError, IndexError, struct errors, ...
    raise ValueError(
        f"{path}: not a readable GGUF file (truncated or corrupt?): {type(e).__name__}: {e}"
    ) from None


def metadata(reader, key: str, default: Any = None) -> Any:
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def _f32(value) -> float:
  """A GGUF float32 as the shortest decimal that reads back to it (9.99999997e-07 -> 1e-06)."""
  return float(str(np.float32(value)))


def _require(reader, path, key: str) -> Any:
  value = metadata(reader, key)
  if value is None:
    raise ValueError(f"{path}: GGUF metadata {key!r} is missing")
  return value


def hf_config(reader, path) -> dict[str, Any]:
  """A transformers config.json dict (5.x dialect keys where they differ) from GGUF metadata."""
  arch = metadata(reader, "general.architecture")
  if arch not in ARCHITECTURES:
    raise ValueError(
        f"{path}: GGUF architecture {arch!r} is not supported (supported: "
        f"{', '.join(ARCHITECTURES)})"
    )
  model_type = ARCHITECTURES[arch]
  get = lambda key, default=None: metadata(reader, f"{arch}.{key}", default)
  need = lambda key: _require(reader, path, f"{arch}.{key}")
  heads = int(need("attention.head_count"))
  embed = int(need("embedding_length"))
  tensors = {t.name: t for t in reader.tensors}
  if "token_embd.weight" not in tensors:
    raise ValueError(f"{path}: no tensor 'token_embd.weight' (the token embedding)")
  vocab = int(tensors["token_embd.weight"].shape[1])  # GGUF shapes list the fastest dim first
  if get("rope.scaling.type", "none") not in ("none", "linear"):
    raise ValueError(
        f"{path}: {arch}.rope.scaling.type={get('rope.scaling.type')!r} is not supported"
    )
  if "rope_freqs.weight" in tensors:
    raise ValueError(f"{path}: per-frequency RoPE factors (rope_freqs.weight) are not supported")
  d: dict[str, Any] = {
      "model_type": model_type,
      "vocab_size": vocab,
      "hidden_size": embed,
      "intermediate_size": int(need("feed_forward_length")),
      "num_hidden_layers": int(need("block_count")),
      "num_attention_heads": heads,
      "num_key_value_heads": int(get("attention.head_count_kv", heads)),
      "head_dim": int(get("attention.key_length", embed // heads)),
      "rms_norm_eps": _f32(need("attention.layer_norm_rms_epsilon")),
      "rope_theta": _f32(get("rope.freq_base", 10000.0)),
      "max_position_embeddings": int(get("context_length", 2048)),
      "tie_word_embeddings": "output.weight" not in tensors,
      "bos_token_id": metadata(reader, "tokenizer.ggml.bos_token_id"),
      "eos_token_id": metadata(reader, "tokenizer.ggml.eos_token_id"),
      "pad_token_id": metadata(reader, "tokenizer.ggml.padding_token_id"),
  }
  if get("rope.scaling.type") == "linear":
    d["rope_scaling"] = {"rope_type": "linear", "factor": float(need("rope.scaling.factor"))}
  if model_type == "gemma3_text":
    d["sliding_window"] = int(need("attention.sliding_window"))
    d["query_pre_attn_scalar"] = d["head_dim"]
  else:
    rope_dim = get("rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != d["head_dim"]:
      raise ValueError(
          f"{path}: partial RoPE ({arch}.rope.dimension_count={rope_dim}) is unsupported"
      )
  return d


def hf_tensors(reader, path, config: dict[str, Any]) -> dict[str, TensorRef]:
  """HF name -> TensorRef reading the dequantised tensor in HF layout, llama.cpp's changes undone.

  A GGUF tensor that belongs to no HF name of this family is refused in one error naming it."""
  import gguf  # pylint: disable=import-outside-toplevel

  model_type = config["model_type"]
  names = hf_names(model_type, int(config["num_hidden_layers"]))
  unknown = [t.name for t in reader.tensors if t.name not in names]
  if unknown:
    raise ValueError(
        f"{path}: {len(unknown)} GGUF tensor(s) this reader does not know for {model_type}: "
        f"{', '.join(unknown[:6])}"
    )
  shift = norm_shift(model_type)
  heads = {
      "self_attn.q_proj.weight": int(config["num_attention_heads"]),
      "self_attn.k_proj.weight": int(config["num_key_value_heads"]),
  }

  def ref(t, hf_name):
    shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGUF lists the fastest dim first
    qtype = gguf.GGMLQuantizationType(t.tensor_type)

    def read():
      try:
        x = gguf.quants.dequantize(t.data, qtype)
      except NotImplementedError:
        raise ValueError(
            f"{path}: tensor {t.name!r} has type {qtype.name}, which the gguf "
            "package cannot dequantise"
        ) from None
      x = np.asarray(x, np.float32).reshape(shape)
      suffix = hf_name.split(".", 3)[-1]
      if model_type == "llama" and suffix in heads:
        x = rope_permute(x, heads[suffix], inverse=True)
      if shift and hf_name.endswith("norm.weight"):
        x = x - np.float32(shift)
      return x

    is_float = qtype.name not in ("I8", "I16", "I32", "I64")
    return TensorRef(f"{t.name} in {Path(path).name}", lambda: (shape, qtype.name, is_float), read)

  return {names[t.name]: ref(t, names[t.name]) for t in reader.tensors}


def read_config(path) -> dict[str, Any]:
  """The config.json dict of a GGUF file (its metadata, see `hf_config`)."""
  return hf_config(open_gguf(path), path)


def read_params(path, model, dtype, shardings=None) -> dict:
  """The params tree of `model` from a GGUF file (validated, dequantised one tensor at a time)."""
  from gkd_jax.models import hf  # pylint: disable=import-outside-toplevel

  reader = open_gguf(path)
  tensors = hf_tensors(reader, path, hf_config(reader, path))
  return hf.params_from_tensors(tensors, model, dtype, shardings, str(path))
