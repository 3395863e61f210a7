"""ModelConfig: the architecture of one decoder-only transformer, as plain hashable data.

One frozen dataclass covers Gemma 2, Gemma 3 (text), Llama 3.x, Qwen 2/2.5 and Qwen 3; the
families differ only in the switches below. Being frozen and hashable, a ModelConfig can be a
static argument of `jax.jit`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

FULL = "full_attention"
SLIDING = "sliding_attention"
ACTIVATIONS = ("silu", "gelu_tanh")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling. `linear` (Gemma 3 global layers) or `llama3` (Llama 3.1+)."""

  rope_type: str  # "linear" | "llama3"
  factor: float
  low_freq_factor: float = 1.0  # llama3 only
  high_freq_factor: float = 4.0  # llama3 only
  original_max_position_embeddings: int = 8192  # llama3 only


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture switches. Field names follow HF config.json where one exists."""

  model_type: str  # HF model_type: gemma2 | gemma3_text | llama | qwen2 | qwen3
  vocab_size: int
  num_layers: int
  embed_dim: int  # hidden_size
  mlp_dim: int  # intermediate_size
  num_heads: int
  num_kv_heads: int
  head_dim: int
  activation: str = "silu"  # silu -> SwiGLU, gelu_tanh -> GeGLU
  norm_eps: float = 1e-6
  norm_scale_plus_one: bool = False  # Gemma RMSNorm: x * (1 + w); weights stored as in HF
  post_attn_norm: bool = False  # Gemma 2/3 sandwich norms around attention output
  post_mlp_norm: bool = False  # ... and around the MLP output
  qk_norm: bool = False  # RMSNorm over head_dim on q and k (Qwen 3, Gemma 3)
  qkv_bias: bool = False  # Qwen 2
  tie_embeddings: bool = True
  scale_embeddings: bool = False  # multiply token embeddings by sqrt(embed_dim) (Gemma)
  query_pre_attn_scalar: Optional[float] = None  # attention scale = this**-0.5 (None: head_dim)
  attn_logit_softcap: Optional[float] = None
  final_logit_softcap: Optional[float] = None
  rope_theta: float = 10000.0  # global (full-attention) layers
  rope_local_theta: Optional[float] = None  # sliding layers (Gemma 3); None: rope_theta
  rope_scaling: Optional[RopeScaling] = None  # applied to global layers only
  sliding_window: Optional[int] = None
  layer_types: tuple[str, ...] = ()  # one of FULL/SLIDING per layer; () means all FULL
  max_position_embeddings: int = 8192
  bos_id: Optional[int] = None
  eos_id: Optional[int] = None
  pad_id: int = 0

  def __post_init__(self):
    if not self.layer_types:
      object.__setattr__(self, "layer_types", (FULL,) * self.num_layers)
    else:
      object.__setattr__(self, "layer_types", tuple(self.layer_types))
    problems = []
    for name in (
        "vocab_size",
        "num_layers",
        "embed_dim",
        "mlp_dim",
        "num_heads",
        "num_kv_heads",
        "head_dim",
    ):
      if int(getattr(self, name)) <= 0:
        problems.append(f"{name}={getattr(self, name)} must be > 0")
    if self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads:
      problems.append(
          f"num_heads={self.num_heads} must be a multiple of " f"num_kv_heads={self.num_kv_heads}"
      )
    if self.activation not in ACTIVATIONS:
      problems.append(f"activation={self.activation!r} must be one of {ACTIVATIONS}")
    if len(self.layer_types) != self.num_layers:
      problems.append(
          f"layer_types has {len(self.layer_types)} entries, " f"num_layers={self.num_layers}"
      )
    bad = sorted(set(self.layer_types) - {FULL, SLIDING})
    if bad:
      problems.append(f"layer_types has unknown entries {bad}; allowed {FULL!r}, {SLIDING!r}")
    if SLIDING in self.layer_types and not self.sliding_window:
      problems.append("sliding_attention layers need sliding_window > 0")
    if problems:
      raise ValueError(f"invalid ModelConfig ({self.model_type}): " + "; ".join(problems))

  @property
  def is_sliding(self) -> tuple[bool, ...]:
    return tuple(t == SLIDING for t in self.layer_types)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)
