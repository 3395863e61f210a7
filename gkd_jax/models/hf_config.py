"""HuggingFace config.json <-> ModelConfig, for both dialects transformers has used.

Released checkpoints carry the transformers 4.x dialect (`rope_theta`, `rope_scaling`,
`rope_local_base_freq`, `sliding_window_pattern`, often no `layer_types`); transformers 5.x writes
`rope_parameters` (one dict, or one per layer type for Gemma 3) and `layer_types`. `config_from_hf`
reads either (and a multimodal Gemma 3 config through its `text_config`); keys a config omits take
the transformers class defaults of its `model_type`, exactly as transformers fills them.
`config_to_hf` writes the 5.x dialect that current transformers reads.

Anything we cannot represent faithfully (an unknown model_type or rope type, attention biases on
the output projection, bidirectional attention, ...) is one ValueError naming the field: a config is
never silently approximated.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from gkd_jax.models.config import FULL, SLIDING, ModelConfig, RopeScaling

# The size fields of a config.json, in the order `hf_sizes` takes them.
SIZE_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)


def hf_sizes(*sizes) -> dict[str, Any]:
  """{hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads}
  of five values in that order."""
  return dict(zip(SIZE_FIELDS, sizes, strict=True))


# transformers' class defaults per model_type (the values a config.json may leave out).
_COMMON = dict(
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    attention_bias=False,
    pad_token_id=None,
    bos_token_id=None,
    eos_token_id=None,
)
_GEMMA2 = dict(
    _COMMON,
    **hf_sizes(2304, 9216, 26, 8, 4),
    vocab_size=256000,
    head_dim=256,
    hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=8192,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
    tie_word_embeddings=True,
    query_pre_attn_scalar=256,
    sliding_window=4096,
    final_logit_softcapping=30.0,
    attn_logit_softcapping=50.0,
)
_QWEN2 = dict(
    _COMMON,
    **hf_sizes(4096, 22016, 32, 32, 32),
    vocab_size=151936,
    head_dim=None,
    hidden_act="silu",
    max_position_embeddings=32768,
    use_sliding_window=False,
    sliding_window=4096,
    max_window_layers=28,
)
_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma2": _GEMMA2,
    "gemma3_text": dict(
        _GEMMA2,
        vocab_size=262208,
        max_position_embeddings=131072,
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        sliding_window_pattern=6,
    ),
    "llama": dict(
        _COMMON,
        **hf_sizes(4096, 11008, 32, 32, None),
        vocab_size=32000,
        head_dim=None,
        hidden_act="silu",
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        mlp_bias=False,
    ),
    "qwen2": _QWEN2,
    "qwen3": dict(_QWEN2, head_dim=128),
}
MODEL_TYPES = tuple(_DEFAULTS)
ARCHITECTURES = {
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_tanh": "gelu_tanh",
}
_GEMMA = ("gemma2", "gemma3_text")


def _fail(model_type: str, field: str, value: Any, why: str) -> ValueError:
  return ValueError(f"config.json ({model_type}): field {field!r}={value!r}: {why}")


def _first_int(value: Any) -> Optional[int]:
  """HF allows a list of EOS ids; ModelConfig keeps the first (generation_config keeps all)."""
  if isinstance(value, (list, tuple)):
    return int(value[0]) if value else None
  return None if value is None else int(value)


def _rope_scaling(model_type: str, field: str, params: Optional[Mapping[str, Any]]):
  """A 4.x `rope_scaling` or one 5.x `rope_parameters` entry -> RopeScaling or None."""
  if not params:
    return None
  kind = params.get("rope_type", params.get("type", "default"))
  if kind == "default":
    return None
  if kind == "linear":
    return RopeScaling("linear", float(params["factor"]))
  if kind == "llama3":
    try:
      return RopeScaling(
          "llama3",
          float(params["factor"]),
          low_freq_factor=float(params["low_freq_factor"]),
          high_freq_factor=float(params["high_freq_factor"]),
          original_max_position_embeddings=int(params["original_max_position_embeddings"]),
      )
    except KeyError as e:
      raise _fail(
          model_type, field, dict(params), f"llama3 rope scaling needs {e.args[0]!r}"
      ) from None
  raise _fail(
      model_type, field, dict(params), "rope type must be one of 'default', 'linear', 'llama3'"
  )


def _rope(model_type: str, d: Mapping[str, Any]):
  """-> (rope_theta, rope_local_theta, rope_scaling) from either dialect."""
  rp = d.get("rope_parameters")
  if rp is not None:  # transformers 5.x
    if FULL in rp or SLIDING in rp:  # one entry per layer type (Gemma 3)
      full = rp.get(FULL) or {}
      local = rp.get(SLIDING) or {}
      if _rope_scaling(model_type, f"rope_parameters.{SLIDING}", local) is not None:
        raise _fail(
            model_type,
            f"rope_parameters.{SLIDING}",
            local,
            "scaled RoPE on sliding layers is not supported",
        )
      theta = float(full.get("rope_theta", d["rope_theta"]))
      local_theta = float(local.get("rope_theta", d.get("rope_local_base_freq", theta)))
      return theta, local_theta, _rope_scaling(model_type, f"rope_parameters.{FULL}", full)
    theta = float(rp.get("rope_theta", d["rope_theta"]))
    scaling = _rope_scaling(model_type, "rope_parameters", rp)
  else:  # transformers 4.x
    theta = float(d["rope_theta"])
    scaling = _rope_scaling(model_type, "rope_scaling", d.get("rope_scaling"))
  local_theta = d.get("rope_local_base_freq") if model_type == "gemma3_text" else None
  return theta, (None if local_theta is None else float(local_theta)), scaling


def _layer_types(model_type: str, d: Mapping[str, Any], num_layers: int) -> tuple[str, ...]:
  if d.get("layer_types") is not None:  # transformers 5.x (and late 4.x)
    types = tuple(d["layer_types"])
    if len(types) != num_layers:
      raise _fail(
          model_type,
          "layer_types",
          types,
          f"needs one entry per layer (num_hidden_layers={num_layers})",
      )
    return types
  if model_type == "gemma2":  # even layers slide: (i + 1) % 2 != 0
    return tuple(SLIDING if (i + 1) % 2 else FULL for i in range(num_layers))
  if model_type == "gemma3_text":
    pattern = int(d["sliding_window_pattern"])
    return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(num_layers))
  if d.get("use_sliding_window") and d.get("sliding_window"):  # Qwen 2/3
    first = int(d["max_window_layers"])
    return tuple(SLIDING if i >= first else FULL for i in range(num_layers))
  return (FULL,) * num_layers


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
  """config.json dict (either dialect) -> ModelConfig; a ValueError names any unsupported field."""
  model_type = hf.get("model_type")
  if model_type == "gemma3":  # multimodal Gemma 3: its language model is a gemma3_text config
    text = dict(hf.get("text_config") or {})
    text.setdefault("model_type", "gemma3_text")
    if "tie_word_embeddings" in hf:
      text.setdefault("tie_word_embeddings", hf["tie_word_embeddings"])
    return config_from_hf(text)
  if model_type not in _DEFAULTS:
    raise _fail(
        str(model_type),
        "model_type",
        model_type,
        f"unsupported; supported model types: {', '.join(MODEL_TYPES + ('gemma3',))}",
    )
  d = dict(_DEFAULTS[model_type])
  d.update(hf)  # an explicit null means None, as in transformers (head_dim/kv heads: derived)
  if d.get("rope_theta") is None:
    d["rope_theta"] = _DEFAULTS[model_type]["rope_theta"]
  gemma = model_type in _GEMMA
  act_field = "hidden_activation" if gemma else "hidden_act"
  act_name = d.get(act_field) or d.get("hidden_act")
  if act_name not in _ACTIVATIONS:
    raise _fail(model_type, act_field, act_name, f"must be one of {sorted(_ACTIVATIONS)}")
  if d.get("attention_bias"):
    raise _fail(
        model_type,
        "attention_bias",
        True,
        "biases on every attention projection (incl. o_proj) are not supported",
    )
  if d.get("mlp_bias"):
    raise _fail(model_type, "mlp_bias", True, "MLP biases are not supported")
  if d.get("use_bidirectional_attention"):
    raise _fail(model_type, "use_bidirectional_attention", True, "only causal decoders")
  num_layers = int(d["num_hidden_layers"])
  num_heads = int(d["num_attention_heads"])
  hidden = int(d["hidden_size"])
  if d.get("head_dim") is None:
    if hidden % num_heads:
      raise _fail(
          model_type,
          "hidden_size",
          hidden,
          f"not a multiple of num_attention_heads={num_heads} and head_dim is unset",
      )
    head_dim = hidden // num_heads
  else:
    head_dim = int(d["head_dim"])
  kv_heads = d.get("num_key_value_heads")
  theta, local_theta, scaling = _rope(model_type, d)
  layer_types = _layer_types(model_type, d, num_layers)
  sliding = d.get("sliding_window") if SLIDING in layer_types else None
  if not gemma and d.get("use_sliding_window") is False:
    sliding = None
  qpas = d.get("query_pre_attn_scalar") if gemma else None
  return ModelConfig(
      model_type=model_type,
      vocab_size=int(d["vocab_size"]),
      num_layers=num_layers,
      embed_dim=hidden,
      mlp_dim=int(d["intermediate_size"]),
      num_heads=num_heads,
      num_kv_heads=int(num_heads if kv_heads is None else kv_heads),
      head_dim=head_dim,
      activation=_ACTIVATIONS[act_name],
      norm_eps=float(d["rms_norm_eps"]),
      norm_scale_plus_one=gemma,
      post_attn_norm=gemma,
      post_mlp_norm=gemma,
      qk_norm=model_type in ("gemma3_text", "qwen3"),
      qkv_bias=model_type == "qwen2",
      tie_embeddings=bool(d["tie_word_embeddings"]),
      scale_embeddings=gemma,
      query_pre_attn_scalar=None if qpas is None else float(qpas),
      # transformers' Gemma 3 reads attn_logit_softcapping but never applies it: neither do we.
      attn_logit_softcap=_opt_float(
          d.get("attn_logit_softcapping") if model_type == "gemma2" else None
      ),
      final_logit_softcap=_opt_float(d.get("final_logit_softcapping") if gemma else None),
      rope_theta=theta,
      rope_local_theta=local_theta,
      rope_scaling=scaling,
      sliding_window=None if sliding is None else int(sliding),
      layer_types=layer_types,
      max_position_embeddings=int(d["max_position_embeddings"]),
      bos_id=_first_int(d.get("bos_token_id")),
      eos_id=_first_int(d.get("eos_token_id")),
      pad_id=_first_int(d.get("pad_token_id")) or 0,
  )


def _opt_float(x):
  return None if x is None else float(x)


def _check_representable(c: ModelConfig) -> None:
  """ModelConfig switches must match what transformers hard-wires for the model_type."""
  if c.model_type not in _DEFAULTS:
    raise ValueError(
        f"cannot write config.json: model_type={c.model_type!r} is not one of " f"{MODEL_TYPES}"
    )
  gemma = c.model_type in _GEMMA
  wired = dict(
      norm_scale_plus_one=gemma,
      post_attn_norm=gemma,
      post_mlp_norm=gemma,
      scale_embeddings=gemma,
      qk_norm=c.model_type in ("gemma3_text", "qwen3"),
      qkv_bias=c.model_type == "qwen2",
  )
  for field, want in wired.items():
    if getattr(c, field) != want:
      raise ValueError(
          f"cannot write config.json: {field}={getattr(c, field)} but transformers' "
          f"{c.model_type} always has {field}={want}"
      )
  if not gemma and (c.attn_logit_softcap or c.final_logit_softcap or c.query_pre_attn_scalar):
    raise ValueError(
        f"cannot write config.json: {c.model_type} has no soft-caps or "
        "query_pre_attn_scalar in transformers"
    )
  if c.attn_logit_softcap and c.model_type != "gemma2":
    raise ValueError(
        f"cannot write config.json: transformers' {c.model_type} does not apply "
        "attention logit soft-capping"
    )
  if c.rope_local_theta not in (None, c.rope_theta) and c.model_type != "gemma3_text":
    raise ValueError(
        f"cannot write config.json: rope_local_theta is Gemma 3 only "
        f"(model_type={c.model_type})"
    )


def _rope_dict(theta: float, scaling: Optional[RopeScaling]) -> dict[str, Any]:
  if scaling is None:
    return {"rope_type": "default", "rope_theta": theta}
  out = {"rope_type": scaling.rope_type, "factor": scaling.factor, "rope_theta": theta}
  if scaling.rope_type == "llama3":
    out.update(
        low_freq_factor=scaling.low_freq_factor,
        high_freq_factor=scaling.high_freq_factor,
        original_max_position_embeddings=scaling.original_max_position_embeddings,
    )
  return out


def config_to_hf(c: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
  """ModelConfig -> config.json dict, transformers 5.x dialect (rope_parameters, layer_types)."""
  _check_representable(c)
  gemma = c.model_type in _GEMMA
  d: dict[str, Any] = {
      "architectures": [ARCHITECTURES[c.model_type]],
      "model_type": c.model_type,
      "vocab_size": c.vocab_size,
      "hidden_size": c.embed_dim,
      "intermediate_size": c.mlp_dim,
      "num_hidden_layers": c.num_layers,
      "num_attention_heads": c.num_heads,
      "num_key_value_heads": c.num_kv_heads,
      "head_dim": c.head_dim,
      ("hidden_activation" if gemma else "hidden_act"): {
          "silu": "silu",
          "gelu_tanh": "gelu_pytorch_tanh",
      }[c.activation],
      "max_position_embeddings": c.max_position_embeddings,
      "rms_norm_eps": c.norm_eps,
      "tie_word_embeddings": c.tie_embeddings,
      "attention_bias": False,
      "layer_types": list(c.layer_types),
      "bos_token_id": c.bos_id,
      "eos_token_id": c.eos_id,
      "pad_token_id": c.pad_id,
      "dtype": dtype,
  }
  if c.model_type == "gemma3_text":
    local = c.rope_theta if c.rope_local_theta is None else c.rope_local_theta
    d["rope_parameters"] = {
        SLIDING: _rope_dict(local, None),
        FULL: _rope_dict(c.rope_theta, c.rope_scaling),
    }
  else:
    d["rope_parameters"] = _rope_dict(c.rope_theta, c.rope_scaling)
  sliding = SLIDING in c.layer_types
  if gemma:
    qpas = c.query_pre_attn_scalar or c.head_dim  # transformers 5.x type-checks: an int
    d.update(
        query_pre_attn_scalar=int(qpas) if float(qpas).is_integer() else qpas,
        attn_logit_softcapping=c.attn_logit_softcap,
        final_logit_softcapping=c.final_logit_softcap,
        sliding_window=c.sliding_window or _DEFAULTS[c.model_type]["sliding_window"],
    )
  else:
    d.update(sliding_window=c.sliding_window if sliding else None)
    if c.model_type in ("qwen2", "qwen3"):
      first = c.layer_types.index(SLIDING) if sliding else c.num_layers
      d.update(use_sliding_window=sliding, max_window_layers=first)
  return d
