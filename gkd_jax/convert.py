"""Checkpoint conversion between GGUF files and HuggingFace folders (`gkd-jax convert`).

  gguf_to_hf("SmolLM2-135M-Instruct.Q4_1.gguf", "out/smollm2")   # config.json, safetensors, tokenizer
  to_gguf("workdir/student", "student.gguf", qtype="q8_0")        # HF folder (or GGUF) -> GGUF

The HF folder opens in transformers (AutoModelForCausalLM, AutoTokenizer with the chat template);
the GGUF file in llama.cpp, Ollama and transformers' GGUF loader. Weights leave GGUF dequantised
to float32 (the exact values the quantised file encodes).
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from gkd_jax import tokenizers
from gkd_jax.models import hf
from gkd_jax.models.gguf_write import save_gguf


def gguf_to_hf(gguf_file, out_dir, dtype=jnp.float32) -> Path:
  """Writes the GGUF file's model and tokenizer as a HuggingFace folder; returns the folder."""
  if not hf.is_gguf(gguf_file):
    raise ValueError(f"--gguf={gguf_file!r} is not a .gguf file")
  hf.read_model(gguf_file)  # fails fast on an architecture or a config we cannot read
  tok = tokenizers.load_tokenizer(str(gguf_file))  # ... and on a tokenizer we cannot build
  model, params = hf.load_pretrained(gguf_file, dtype=dtype)
  hf.save_pretrained(out_dir, model, params)
  tokenizers.save_tokenizer(tok, str(out_dir))
  return Path(out_dir)


def to_gguf(checkpoint, out_file, qtype: str = "f32") -> Path:
  """Writes an HF folder's (or a GGUF file's) model and tokenizer as one GGUF file."""
  tok = tokenizers.load_tokenizer(str(checkpoint))
  model, params = hf.load_pretrained(checkpoint, dtype=jnp.float32)
  return save_gguf(out_file, model, params, tok, qtype=qtype, name=Path(str(checkpoint)).stem)
