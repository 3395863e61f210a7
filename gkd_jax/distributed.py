"""Multi-process start-up: `jax.distributed.initialize` from explicit flags, or auto-detected.

  gkd-jax train ... --multihost                                   # TPU VMs, SLURM, ...: detected
  gkd-jax train ... --multihost --coordinator=10.0.0.2:1234 --num_processes=2 --process_id=0

Every process runs the same command (with its own --process_id). CPU devices use gloo collectives
across processes, so the same path runs on one machine: two processes with
XLA_FLAGS=--xla_force_host_platform_device_count=2 each make one 4-device run (tests/).
"""

from __future__ import annotations

from typing import Optional


def check_args(coordinator: str, num_processes: Optional[int], process_id: Optional[int]):
  """ValueError (one line, naming the flag) unless all three are given and valid, or none is."""
  given = {
      "--coordinator": bool(coordinator),
      "--num_processes": num_processes is not None,
      "--process_id": process_id is not None,
  }
  if not any(given.values()):
    return False
  if not all(given.values()):
    missing = ", ".join(k for k, v in given.items() if not v)
    raise ValueError(
        f"--multihost: {missing} missing; give --coordinator, --num_processes and "
        "--process_id together, or none of them to auto-detect (TPU VMs, SLURM)"
    )
  host, _, port = coordinator.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"--coordinator={coordinator!r} must be HOST:PORT (e.g. 10.0.0.2:1234)")
  if num_processes < 1:
    raise ValueError(f"--num_processes={num_processes} must be >= 1")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
  return True


def initialize(
    coordinator: str = "", num_processes: Optional[int] = None, process_id: Optional[int] = None
) -> None:
  """Joins the multi-process run (before anything else touches a JAX backend)."""
  import jax  # pylint: disable=import-outside-toplevel

  explicit = check_args(coordinator, num_processes, process_id)
  # CPU devices talk across processes through gloo (no effect on TPU/GPU collectives).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
  else:
    jax.distributed.initialize()
