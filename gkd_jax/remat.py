"""`train.remat`: what the student's layers keep for the backward pass, and `auto`'s choice.

Policies (a name, or True = `full`, False = `none`), applied to each decoder block (looped form:
`nnx.remat`; scanned form: `jax.checkpoint` around the scan body), in order of falling memory:

- `none`: no remat; every block keeps all its activations (attention's [B,H,T,S] float32 scores
  included). Fastest; use whenever the step fits.
- `save_dots`: keep the outputs of the weight matmuls (q/k/v/o projections, MLP gate/up/down:
  `dots_with_no_batch_dims_saveable`), recompute the rest (norms, RoPE, softmax, activations).
  Not `dots_saveable`: that also keeps attention's batched dots, the T^2 scores remat is for.
  Memory O(B*T*(D+F)) per layer, little recompute (no matmul is redone): try first when `none`
  does not fit.
- `save_dots_except_mlp`: keep only the attention projections' outputs (names in
  `ATTENTION_OUTPUTS`), recompute the MLP (its [B,T,F] intermediates dominate `save_dots` where
  F ~ 4-8 D): between `save_dots` and `full` in memory and time.
- `full`: keep each block's input only, recompute the whole block. One layer's activations live
  at a time; ~1/3 more FLOPs (about 10% of a GKD step at the benchmark sizes).
- `offload`: `save_dots`, but the saved matmul outputs go to pinned host memory and come back in
  the backward pass (`offload_dot_with_no_batch_dims`): `full`'s HBM with less recompute, paid
  in host<->device transfers. TPU/GPU only: on CPU the device memory is the host's, so a run
  refuses it (`check_platform`) rather than silently meaning `save_dots`.

`auto` chooses between `none` and `full`: on a backend that reports a memory limit (TPU, GPU:
`device.memory_stats()["bytes_limit"]`) the train step is compiled without remat first; when
XLA's memory analysis puts its per-device peak within `FRACTION` of the limit, that compiled
executable is the step (no second compile), otherwise the step is rebuilt with `full`. A backend
that reports no limit (CPU hosts; `gkd-jax plan`'s compile-only TPU devices, whose plan re-plans
with `full` and `save_dots` when a step does not fit) gets `none`: recomputation there only costs
time.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import jax

FRACTION = 0.9
POLICIES = ("none", "save_dots", "save_dots_except_mlp", "full", "offload")
# The values `train.remat` may take: a policy, True (= full), False (= none), or `choose` decides.
CHOICES = (True, False, "auto") + POLICIES
# `jax.ad_checkpoint.checkpoint_name`s the decoder gives its blocks' matmul outputs.
ATTENTION_OUTPUTS = ("attn_q", "attn_k", "attn_v", "attn_out")
MLP_OUTPUTS = ("mlp_gate", "mlp_up", "mlp_down")
# Where the platforms keep host memory that an `offload` step can stage activations in.
OFFLOAD_PLATFORMS = ("tpu", "gpu")

Setting = Union[bool, str]


def policy_name(setting: Setting) -> str:
  """The policy a resolved `train.remat` names: True -> "full", False -> "none"."""
  if setting is True or setting is False:
    return "full" if setting else "none"
  if setting not in POLICIES:
    raise ValueError(f"train.remat={setting!r} is not one of {', '.join(map(str, CHOICES))}")
  return setting


def checkpoint_policy(setting: Setting) -> Optional[Callable[..., bool]]:
  """The `jax.checkpoint` policy of a (non-`none`) setting; None for `full` (save nothing)."""
  name = policy_name(setting)
  cp = jax.checkpoint_policies
  if name == "save_dots":
    return cp.dots_with_no_batch_dims_saveable
  if name == "save_dots_except_mlp":
    return cp.save_only_these_names(*ATTENTION_OUTPUTS)
  if name == "offload":
    return cp.offload_dot_with_no_batch_dims(offload_src="device", offload_dst="pinned_host")
  if name == "full":
    return None
  raise ValueError("train.remat='none' has no checkpoint policy: the blocks are not rematted")


def check_platform(setting: Setting, platform: str) -> None:
  """Raises (one line) for `offload` on a platform without separate host memory to offload to."""
  if setting == "offload" and platform not in OFFLOAD_PLATFORMS:
    raise ValueError(
        f"train.remat='offload' needs a TPU or GPU (host offload); this run's devices are "
        f"{platform}, whose device memory is host memory: use 'save_dots' there"
    )


def memory_limit(device) -> Optional[int]:
  """Bytes one device can hold, or None when the backend does not say."""
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  (compile-only devices raise)
    return None
  return (stats or {}).get("bytes_limit")


def peak_bytes(compiled) -> int:
  """Per-device peak of a compiled program: arguments + outputs - aliased + temporaries."""
  m = compiled.memory_analysis()
  return (
      m.argument_size_in_bytes
      + m.output_size_in_bytes
      - m.alias_size_in_bytes
      + m.temp_size_in_bytes
  )


def choose(
    make_step: Callable[[bool], Any], abstract_args: tuple, device, limit: Optional[int] = None
) -> tuple[bool, Any]:
  """(remat, step): `make_step(remat)` is the jitted step; `abstract_args` its abstract inputs."""
  limit = memory_limit(device) if limit is None else limit
  if limit is None:
    return False, make_step(False)
  compiled = make_step(False).lower(*abstract_args).compile()
  if peak_bytes(compiled) <= FRACTION * limit:
    return False, compiled
  return True, make_step(True)
