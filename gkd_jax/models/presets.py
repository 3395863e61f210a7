"""Named ModelConfigs: the released Gemma 2/3, Llama 3.x, Qwen 2.5/3 sizes, and tiny test sizes.

Each real preset is written as the architecture fields of the model's released HuggingFace
config.json (transformers 4.x dialect, as published) and parsed by `hf_config.config_from_hf`, so a
preset and the checkpoint it names agree by construction. For Gemma 3 4B/12B/27B the fields are the
`text_config` of the multimodal release (the language model only).

  cfg = get_preset("qwen3_0.6b")          # ModelConfig
  cfg = get_preset("tiny_llama").replace(vocab_size=512)
"""

from __future__ import annotations

from typing import Any

from gkd_jax.models.config import ModelConfig
from gkd_jax.models.hf_config import config_from_hf, hf_sizes

# The fields every preset of a family shares (its released config.json files, less the sizes).
_GEMMA2 = dict(
    model_type="gemma2",
    vocab_size=256000,
    head_dim=256,
    max_position_embeddings=8192,
    rope_theta=10000.0,
    sliding_window=4096,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    hidden_activation="gelu_pytorch_tanh",
    bos_token_id=2,
    eos_token_id=1,
    pad_token_id=0,
)
# Gemma 3: Gemma 2's activation, norms and special tokens; no soft-caps, local/global rope bases.
_GEMMA3 = dict(
    _GEMMA2,
    model_type="gemma3_text",
    vocab_size=262208,
    query_pre_attn_scalar=256,
    max_position_embeddings=131072,
    rope_theta=1_000_000.0,
    rope_local_base_freq=10_000.0,
    rope_scaling={"rope_type": "linear", "factor": 8.0},
    sliding_window=1024,
    sliding_window_pattern=6,
    final_logit_softcapping=None,
    attn_logit_softcapping=None,
)


def _llama3_rope(factor, original_max_position_embeddings) -> dict[str, Any]:
  return {
      "rope_type": "llama3",
      "factor": factor,
      "low_freq_factor": 1.0,
      "high_freq_factor": 4.0,
      "original_max_position_embeddings": original_max_position_embeddings,
  }


_LLAMA32 = dict(
    model_type="llama",
    vocab_size=128256,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    rope_scaling=_llama3_rope(32.0, 8192),
    tie_word_embeddings=True,
    bos_token_id=128000,
    eos_token_id=128001,
)
_QWEN25 = dict(
    model_type="qwen2",
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    use_sliding_window=False,
    tie_word_embeddings=True,
    bos_token_id=151643,
    eos_token_id=151643,
)
# Qwen 3: Qwen 2.5's vocabulary and switches; an explicit head_dim, 8 KV heads at every size.
_QWEN3 = dict(
    _QWEN25,
    model_type="qwen3",
    head_dim=128,
    max_position_embeddings=40960,
    eos_token_id=151645,
    num_key_value_heads=8,
)


# Architecture fields of the released config.json files (HF hub ids in the comments).
_HF_PRESETS: dict[str, dict[str, Any]] = {
    # google/gemma-2-{2b,9b,27b}
    "gemma2_2b": dict(_GEMMA2, **hf_sizes(2304, 9216, 26, 8, 4), query_pre_attn_scalar=256),
    "gemma2_9b": dict(_GEMMA2, **hf_sizes(3584, 14336, 42, 16, 8), query_pre_attn_scalar=256),
    "gemma2_27b": dict(
        _GEMMA2, **hf_sizes(4608, 36864, 46, 32, 16), query_pre_attn_scalar=144, head_dim=128
    ),
    # google/gemma-3-1b-pt (text only); gemma-3-{4b,12b,27b}-pt text_config
    "gemma3_1b": dict(
        _GEMMA3,
        **hf_sizes(1152, 6912, 26, 4, 1),
        vocab_size=262144,
        sliding_window=512,
        max_position_embeddings=32768,
        rope_scaling=None,
    ),
    "gemma3_4b": dict(_GEMMA3, **hf_sizes(2560, 10240, 34, 8, 4)),
    "gemma3_12b": dict(_GEMMA3, **hf_sizes(3840, 15360, 48, 16, 8)),
    "gemma3_27b": dict(
        _GEMMA3, **hf_sizes(5376, 21504, 62, 32, 16), head_dim=128, query_pre_attn_scalar=168
    ),
    # meta-llama/Llama-3.2-1B, Llama-3.2-3B, Llama-3.1-8B
    "llama3.2_1b": dict(_LLAMA32, **hf_sizes(2048, 8192, 16, 32, 8), head_dim=64),
    "llama3.2_3b": dict(_LLAMA32, **hf_sizes(3072, 8192, 28, 24, 8), head_dim=128),
    "llama3.1_8b": dict(
        _LLAMA32,
        **hf_sizes(4096, 14336, 32, 32, 8),
        head_dim=128,
        tie_word_embeddings=False,
        rope_scaling=_llama3_rope(8.0, 8192),
    ),
    # Qwen/Qwen2.5-{0.5B,1.5B,3B,7B}
    "qwen2.5_0.5b": dict(_QWEN25, **hf_sizes(896, 4864, 24, 14, 2)),
    "qwen2.5_1.5b": dict(_QWEN25, **hf_sizes(1536, 8960, 28, 12, 2)),
    "qwen2.5_3b": dict(_QWEN25, **hf_sizes(2048, 11008, 36, 16, 2)),
    "qwen2.5_7b": dict(
        _QWEN25, **hf_sizes(3584, 18944, 28, 28, 4), vocab_size=152064, tie_word_embeddings=False
    ),
    # Qwen/Qwen3-{0.6B,1.7B,4B,8B}
    "qwen3_0.6b": dict(_QWEN3, **hf_sizes(1024, 3072, 28, 16, 8)),
    "qwen3_1.7b": dict(_QWEN3, **hf_sizes(2048, 6144, 28, 16, 8)),
    "qwen3_4b": dict(_QWEN3, **hf_sizes(2560, 9728, 36, 32, 8)),
    "qwen3_8b": dict(_QWEN3, **hf_sizes(4096, 12288, 36, 32, 8), tie_word_embeddings=False),
}


# Tiny sizes for tests and the CPU demo: same family switches, a few thousand parameters per layer.
def _tiny(layers) -> dict[str, Any]:
  return dict(
      hf_sizes(64, 128, layers, 4, 2), vocab_size=256, head_dim=16, max_position_embeddings=2048
  )


_HF_PRESETS.update(
    {
        "tiny_llama": dict(
            _LLAMA32,
            **_tiny(2),
            bos_token_id=1,
            eos_token_id=2,
            rope_scaling=_llama3_rope(8.0, 64),
        ),
        "tiny_gemma2": dict(_GEMMA2, **_tiny(2), query_pre_attn_scalar=16, sliding_window=32),
        "tiny_gemma3": dict(
            _GEMMA3,
            **_tiny(3),
            sliding_window=32,
            sliding_window_pattern=3,
            query_pre_attn_scalar=16,
        ),
        "tiny_qwen2": dict(_QWEN25, **_tiny(2), bos_token_id=1, eos_token_id=2),
        "tiny_qwen3": dict(_QWEN3, **_tiny(2), bos_token_id=1, eos_token_id=2),
    }
)

PRESETS: tuple[str, ...] = tuple(_HF_PRESETS)


def preset_hf_config(name: str) -> dict[str, Any]:
  """The config.json fields a preset is built from (a copy)."""
  _check(name)
  return dict(_HF_PRESETS[name])


def get_preset(name: str) -> ModelConfig:
  """ModelConfig for a preset name; ValueError listing the known names otherwise."""
  _check(name)
  return config_from_hf(_HF_PRESETS[name])


def _check(name: str) -> None:
  if name not in _HF_PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
