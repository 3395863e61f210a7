"""Model presets and the config.json dialects.

Sizes are checked against the parameter totals of the released checkpoints (the safetensors
totals the HuggingFace hub reports for each repository; Gemma 3 1B's as listed by keras-hub),
counted in closed form from the config; the decoder's own `param_shapes` must agree with the
closed form. A wrong head count, MLP width, vocabulary or tying shows up as a different total.
"""

import json
import os

import pytest

from gkd_jax import models
from gkd_jax.models import hf_config
from gkd_jax.models.config import FULL, SLIDING

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")

RELEASED_PARAMS = {
    "gemma2_2b": 2_614_341_888,  # google/gemma-2-2b
    "gemma2_9b": 9_241_705_984,  # google/gemma-2-9b
    "gemma2_27b": 27_227_128_320,  # google/gemma-2-27b
    "gemma3_1b": 999_885_952,  # google/gemma-3-1b-pt
    "llama3.2_1b": 1_235_814_400,  # meta-llama/Llama-3.2-1B
    "llama3.2_3b": 3_212_749_824,  # meta-llama/Llama-3.2-3B
    "llama3.1_8b": 8_030_261_248,  # meta-llama/Llama-3.1-8B
    "qwen2.5_0.5b": 494_032_768,  # Qwen/Qwen2.5-0.5B
    "qwen2.5_1.5b": 1_543_714_304,  # Qwen/Qwen2.5-1.5B
    "qwen2.5_3b": 3_085_938_688,  # Qwen/Qwen2.5-3B
    "qwen2.5_7b": 7_615_616_512,  # Qwen/Qwen2.5-7B
    "qwen3_0.6b": 596_049_920,  # Qwen/Qwen3-0.6B
    "qwen3_4b": 4_022_468_096,  # Qwen/Qwen3-4B
    "qwen3_8b": 8_190_735_360,  # Qwen/Qwen3-8B
}
REAL = [n for n in models.PRESETS if not n.startswith("tiny_")]


def _closed_form_count(c) -> int:
  D, F, V, H, K, Dh = (
      c.embed_dim,
      c.mlp_dim,
      c.vocab_size,
      c.num_heads,
      c.num_kv_heads,
      c.head_dim,
  )
  layer = (
      2 * D * H * Dh
      + 2 * D * K * Dh
      + 3 * D * F
      + D * (2 + c.post_attn_norm + c.post_mlp_norm)
      + 2 * Dh * c.qk_norm
      + (H + 2 * K) * Dh * c.qkv_bias
  )
  return V * D * (1 if c.tie_embeddings else 2) + D + c.num_layers * layer


@pytest.mark.parametrize("name", sorted(RELEASED_PARAMS))
def test_real_preset_sizes_match_the_released_checkpoints(name):
  cfg = models.get_preset(name)
  assert _closed_form_count(cfg) == RELEASED_PARAMS[name]
  # The decoder agrees with the closed form (on 2 layers: building 46 abstract layers is slow).
  short = cfg.replace(num_layers=2, layer_types=cfg.layer_types[:2])
  assert models.num_params(models.build(short)) == _closed_form_count(short)


def test_every_family_and_size_is_there():
  want = {
      "gemma2_2b",
      "gemma2_9b",
      "gemma2_27b",
      "gemma3_1b",
      "gemma3_4b",
      "gemma3_12b",
      "gemma3_27b",
      "llama3.2_1b",
      "llama3.2_3b",
      "llama3.1_8b",
      "qwen2.5_0.5b",
      "qwen2.5_1.5b",
      "qwen2.5_3b",
      "qwen2.5_7b",
      "qwen3_0.6b",
      "qwen3_1.7b",
      "qwen3_4b",
      "qwen3_8b",
      "tiny_llama",
      "tiny_gemma2",
      "tiny_gemma3",
      "tiny_qwen2",
      "tiny_qwen3",
  }
  assert want == set(models.PRESETS)


def test_family_switches():
  g2, g3 = models.get_preset("gemma2_9b"), models.get_preset("gemma3_27b")
  assert g2.layer_types[:2] == (SLIDING, FULL) and g2.attn_logit_softcap == 50.0
  assert g2.final_logit_softcap == 30.0 and g2.sliding_window == 4096
  assert g3.layer_types[:6] == (SLIDING,) * 5 + (FULL,) and g3.qk_norm
  assert g3.query_pre_attn_scalar == 168 and g3.rope_local_theta == 10_000
  assert g3.rope_scaling.rope_type == "linear" and g3.rope_scaling.factor == 8.0
  assert models.get_preset("gemma3_1b").rope_scaling is None
  ll = models.get_preset("llama3.1_8b")
  assert ll.rope_scaling.rope_type == "llama3" and not ll.tie_embeddings
  assert models.get_preset("qwen2.5_0.5b").qkv_bias
  q3 = models.get_preset("qwen3_0.6b")
  assert q3.qk_norm and not q3.qkv_bias and q3.sliding_window is None
  assert set(q3.layer_types) == {FULL}
  for name in models.PRESETS:
    c = models.get_preset(name)
    assert c.norm_scale_plus_one == c.model_type.startswith("gemma"), name
    assert c.activation == ("gelu_tanh" if c.model_type.startswith("gemma") else "silu"), name


def test_unknown_preset_lists_the_names():
  with pytest.raises(ValueError) as info:
    models.get_preset("gemma4_2b")
  for name in ("gemma4_2b", "qwen3_0.6b", "tiny_llama", "llama3.1_8b"):
    assert name in str(info.value)


@pytest.mark.parametrize("name", models.PRESETS)
def test_config_json_round_trip(name):
  """Preset (4.x dialect) -> ModelConfig -> 5.x config.json -> the same ModelConfig."""
  cfg = models.get_preset(name)
  written = hf_config.config_to_hf(cfg)
  assert "rope_parameters" in written and "rope_theta" not in written
  assert json.loads(json.dumps(written)) == written
  assert hf_config.config_from_hf(written) == cfg
  # transformers 5.x type-checks config fields: integers must be written as ints.
  for key in (
      "vocab_size",
      "hidden_size",
      "intermediate_size",
      "num_hidden_layers",
      "num_attention_heads",
      "num_key_value_heads",
      "head_dim",
      "query_pre_attn_scalar",
      "sliding_window",
      "max_position_embeddings",
  ):
    assert written.get(key) is None or type(written[key]) is int, (key, written[key])


def test_omitted_fields_take_transformers_defaults():
  """A multimodal Gemma 3 config lists only what differs from Gemma3TextConfig's defaults."""
  partial = {
      "model_type": "gemma3",
      "text_config": {
          "hidden_size": 2560,
          "intermediate_size": 10240,
          "model_type": "gemma3_text",
          "num_hidden_layers": 34,
          "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
          "sliding_window": 1024,
      },
  }
  assert hf_config.config_from_hf(partial) == models.get_preset("gemma3_4b").replace(
      bos_id=2, eos_id=1, pad_id=0
  )
  llama = hf_config.config_from_hf(
      {
          "model_type": "llama",
          "hidden_size": 64,
          "num_attention_heads": 4,
          "num_hidden_layers": 2,
          "intermediate_size": 128,
          "vocab_size": 100,
      }
  )
  assert llama.num_kv_heads == 4 and llama.head_dim == 16 and not llama.tie_embeddings
  assert llama.rope_theta == 10000.0 and llama.rope_scaling is None


def test_qwen_window_is_ignored_unless_enabled():
  base = dict(
      model_type="qwen2",
      hidden_size=64,
      num_attention_heads=4,
      num_key_value_heads=2,
      num_hidden_layers=4,
      intermediate_size=128,
      vocab_size=100,
      sliding_window=32768,
  )
  off = hf_config.config_from_hf(dict(base, use_sliding_window=False))
  assert off.sliding_window is None and set(off.layer_types) == {FULL}
  on = hf_config.config_from_hf(
      dict(base, use_sliding_window=True, sliding_window=16, max_window_layers=2)
  )
  assert on.layer_types == (FULL, FULL, SLIDING, SLIDING) and on.sliding_window == 16


def test_eos_list_keeps_the_first_id():
  c = hf_config.config_from_hf(
      {
          "model_type": "gemma3_text",
          "eos_token_id": [1, 106],
          "num_hidden_layers": 2,
          "sliding_window_pattern": 2,
      }
  )
  assert c.eos_id == 1 and c.layer_types == (SLIDING, FULL)


def test_gemma3_ignores_attention_softcap_like_transformers():
  with open(os.path.join(FIXTURES, "gemma3_text", "config.json")) as f:
    d = json.load(f)
  assert d["attn_logit_softcapping"] is not None  # transformers' Gemma 3 never applies it
  c = hf_config.config_from_hf(d)
  assert c.attn_logit_softcap is None and c.final_logit_softcap == d["final_logit_softcapping"]


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("rope_scaling", {"rope_type": "dynamic", "factor": 2.0}, ["rope_scaling", "dynamic"]),
        ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}, ["low_freq_factor"]),
        ("mlp_bias", True, ["mlp_bias"]),
        ("layer_types", [FULL], ["layer_types", "num_hidden_layers=2"]),
    ],
)
def test_unrepresentable_configs_name_the_field(field, value, words):
  d = {
      "model_type": "llama",
      "hidden_size": 64,
      "num_attention_heads": 4,
      "num_hidden_layers": 2,
      "intermediate_size": 128,
      "vocab_size": 100,
      field: value,
  }
  with pytest.raises(ValueError) as info:
    hf_config.config_from_hf(d)
  for w in words:
    assert w in str(info.value)
