"""Tiny models and tokenizers for tests, benchmarks and notebooks (no downloads, seconds to build).

  model, params = tiny("gemma2", seed=1)           # one flavour of every family, random params
  model, params = tiny_llama(seed=0, vocab_size=32)  # small untied Llama, `models.init` params
  mesh, sharded = sharded_2x2x2(model, params)     # placed on a data x fsdp x tensor = 2x2x2 mesh
  path = build_sentencepiece(directory)            # a real sentencepiece / tokenizer.json model
  path = build_tokenizer_json(directory, "chatml")

Every factory is deterministic in its arguments: the same call gives the same values.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece as spm
import tokenizers

from gkd_jax import models, sharding
from gkd_jax.models import FULL, SLIDING, ModelConfig, RopeScaling, presets
from gkd_jax.models.hf_config import config_from_hf, hf_sizes

_BASE = dict(
    vocab_size=48, num_layers=2, embed_dim=32, mlp_dim=48, num_heads=4, num_kv_heads=2, head_dim=8
)
# What Gemma 2 and 3 share: GeGLU, (1+w) norms, sandwich norms, sqrt(d) embedding scale.
_GEMMA = dict(
    activation="gelu_tanh",
    norm_scale_plus_one=True,
    post_attn_norm=True,
    post_mlp_norm=True,
    scale_embeddings=True,
)

FAMILIES = {
    # Llama 3.x: SwiGLU, tied, llama3 rope scaling whose wavelength bands all occur at head_dim 8.
    "llama": dict(
        model_type="llama",
        rope_theta=10000.0,
        norm_eps=1e-5,
        rope_scaling=RopeScaling(
            "llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
    ),
    # Qwen 2: q/k/v biases, untied head.
    "qwen2": dict(model_type="qwen2", qkv_bias=True, tie_embeddings=False, rope_theta=1e6),
    # Qwen 3: q/k RMSNorm over head_dim, MQA-ish grouping.
    "qwen3": dict(model_type="qwen3", qk_norm=True, num_kv_heads=1, rope_theta=1e6),
    # Gemma 2: both soft-caps (small so tanh bites), query_pre_attn_scalar != head_dim, sliding
    # layers (window 4).
    "gemma2": dict(
        _GEMMA,
        model_type="gemma2",
        query_pre_attn_scalar=12.0,
        attn_logit_softcap=2.0,
        final_logit_softcap=1.5,
        sliding_window=4,
        layer_types=(SLIDING, FULL),
    ),
    # Gemma 3: + q/k (1+w) norms, local/global rope bases, linear scaling on global layers only.
    "gemma3": dict(
        _GEMMA,
        model_type="gemma3_text",
        num_layers=3,
        qk_norm=True,
        query_pre_attn_scalar=8.0,
        rope_theta=1e6,
        rope_local_theta=10000.0,
        rope_scaling=RopeScaling("linear", factor=8.0),
        sliding_window=3,
        layer_types=(SLIDING, SLIDING, FULL),
    ),
}


def tiny_config(family: str, **overrides) -> ModelConfig:
  """A 2-3 layer, 48-token config of `family` (a key of FAMILIES) with `overrides` applied."""
  kw = dict(_BASE)
  kw.update(FAMILIES[family])
  kw.update(overrides)
  return ModelConfig(**kw)


def random_params(model, seed: int = 0, scale: float = 0.3):
  """Numpy params with O(1) activations: norms away from their identity value, random biases."""
  rng = np.random.default_rng(seed)
  plus_one = model.config.norm_scale_plus_one

  def leaf(path, sds):
    name = jax.tree_util.keystr(path)
    x = rng.standard_normal(sds.shape)
    if "norm" in name:
      x = 0.3 * x + (0.0 if plus_one else 1.0)
    elif "embed" in name and "lm_head" not in name:
      x = x * 1.0
    elif "bias" in name:
      x = 0.5 * x
    else:
      x = scale * x
    return np.asarray(x, sds.dtype)

  return jax.tree_util.tree_map_with_path(leaf, models.param_shapes(model))


def normal_params(model, seed: int):
  """Standard-normal values for every leaf (norm scales and biases too, never zeros)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32), s.dtype),
      models.param_shapes(model),
  )


def tiny(family: str, dtype=np.float32, seed: int = 0, **overrides):
  """(model, params) of `tiny_config(family, **overrides)` with `random_params(seed)`."""
  model = models.build(tiny_config(family, **overrides), dtype)
  return model, jax.tree.map(jnp.asarray, random_params(model, seed))


# The special ids of `build_sentencepiece`'s models and of the bundled arithmetic tokenizer, as
# ModelConfig and the sentencepiece trainer both name them (unk is 1).
SPM_IDS = dict(bos_id=2, eos_id=3, pad_id=0)

# Per-step training metrics that are a function of the run alone (not of wall time): what tests
# compare between two runs that must be the same (meshes, processes, resumes).
DETERMINISTIC_METRICS = (
    "loss",
    "divergence",
    "on_policy_fraction",
    "completion_length",
    "grad_norm",
    "student_entropy",
    "teacher_entropy",
)


def llama_config(
    vocab_size: int = 32,
    num_layers: int = 1,
    embed_dim: int = 16,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    **overrides,
) -> ModelConfig:
  """A small untied Llama (SwiGLU of width 2·embed_dim, head_dim 8)."""
  kw = dict(
      model_type="llama",
      vocab_size=vocab_size,
      num_layers=num_layers,
      embed_dim=embed_dim,
      mlp_dim=2 * embed_dim,
      num_heads=num_heads,
      num_kv_heads=num_kv_heads,
      head_dim=8,
      tie_embeddings=False,
  )
  kw.update(overrides)
  return ModelConfig(**kw)


def tiny_llama(seed: int = 0, dtype=jnp.float32, **config):
  """(model, params) of `llama_config(**config)` with the trainer's own `models.init(seed)`."""
  model = models.build(llama_config(**config), dtype)
  return model, models.init(model, jax.random.key(seed))


def save_tiny_llama(path, seed: int = 0, num_layers: int = 1, vocab_size: int = 32) -> str:
  """An HF checkpoint at `path` of a 32-wide untied Llama (4/2 heads) with the bundled arithmetic
  tokenizer's ids (`SPM_IDS`): a student or teacher for trainer tests on that task."""
  model, params = tiny_llama(
      seed,
      vocab_size=vocab_size,
      num_layers=num_layers,
      embed_dim=32,
      num_heads=4,
      num_kv_heads=2,
      **SPM_IDS,
  )
  models.save_pretrained(path, model, params)
  return str(path)


def llama_100m_config() -> ModelConfig:
  """~100M parameters: Llama 3.2's architecture (tied, rope base 5e5, head_dim 64) at 12 layers,
  d=768, GQA 12/4 heads, SwiGLU 2048, a 32k vocabulary, 2048 positions, no rope scaling."""
  hf = dict(presets.preset_hf_config("llama3.2_1b"), **hf_sizes(768, 2048, 12, 12, 4))
  hf.update(vocab_size=32000, bos_token_id=1, eos_token_id=2, pad_token_id=0)
  hf.update(max_position_embeddings=2048, rope_scaling=None)
  return config_from_hf(hf)


TP_FSDP_RULES = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
)


def sharded_2x2x2(model, params):
  """(mesh, params) with params placed on a ("data","fsdp","tensor") = 2x2x2 mesh of fake devices
  by their logical axes, through the trainer's own sharding rules."""
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])
  shardings = sharding.tree_shardings(
      mesh, models.logical_axes(model), TP_FSDP_RULES, shapes=models.param_shapes(model)
  )
  return mesh, jax.device_put(params, shardings)


TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Knowledge distillation trains a small student to imitate a large teacher.",
    "On-policy distillation lets the student learn from its own samples!",
    "Numbers like 12345 and 678 appear; so do symbols: + - = ( ) ?",
    "Hello world, hello student, hello teacher.",
] * 4

CHAT_SPECIALS = {
    "gemma": ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"],
    "llama3": [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ],
    "chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
}


def build_sentencepiece(directory, vocab_size=120, chat=False):
  """Trains a small BPE sentencepiece model (pad=0, unk=1, bos=2, eos=3) into directory."""
  os.makedirs(directory, exist_ok=True)
  # Like Gemma's: no normalization, no dummy prefix, "\n" a piece of its own.
  extra = ["\n"] + (["<start_of_turn>", "<end_of_turn>"] if chat else [])
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(TEXT),
      model_prefix=os.path.join(directory, "tokenizer"),
      model_type="bpe",
      vocab_size=vocab_size,
      unk_id=1,
      **SPM_IDS,
      user_defined_symbols=extra,
      normalization_rule_name="identity",
      add_dummy_prefix=False,
      remove_extra_whitespaces=False,
      byte_fallback=False,
      character_coverage=1.0,
      num_threads=1,
      minloglevel=2,
  )
  os.remove(os.path.join(directory, "tokenizer.vocab"))
  return os.path.join(directory, "tokenizer.model")


def build_tokenizer_json(directory, family="chatml", vocab_size=200, configs=True):
  """Trains a byte-level BPE `tokenizers` model with the family's special tokens into directory."""
  os.makedirs(directory, exist_ok=True)
  specials = CHAT_SPECIALS[family]
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=specials,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  tok.train_from_iterator(TEXT, trainer)
  tok.save(os.path.join(directory, "tokenizer.json"))
  if configs:
    cfg = {
        "gemma": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
        "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        "chatml": {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    }[family]
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
      json.dump(cfg, f)
  return os.path.join(directory, "tokenizer.json")
