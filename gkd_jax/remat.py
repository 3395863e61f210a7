"""`train.remat="auto"`: recompute the student's layers in the backward pass only when needed.

On a backend that reports a memory limit (TPU, GPU: `device.memory_stats()["bytes_limit"]`) the
train step is compiled without remat first; when XLA's memory analysis puts its per-device peak
within `FRACTION` of the limit, that compiled executable is the step (no second compile), otherwise
the step is rebuilt with remat. A backend that reports no limit (CPU hosts; `gkd-jax plan`'s
compile-only TPU devices, whose plan re-plans with remat when a step does not fit) gets remat off:
recomputation there only costs time (about 10% of a GKD step at the benchmark sizes of
benchmarks/gkd_step_vs_trl.py).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

FRACTION = 0.9
# The values `train.remat` may take: always, never, or `choose` decides.
CHOICES = (True, False, "auto")


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
