"""Cloud TPU slices on any host: accelerator types -> topologies -> devices, and per-chip memory.

  topology_name("v5p-64")        # "v5p:2x4x4" (v5p/v4 types count TensorCores, 2 per chip)
  topology_name("v5litepod-16")  # "v5e:4x4"
  devices = tpu_devices("v6e-8") # the 8 devices of a v6e slice, for AOT compilation on a CPU host

`tpu_devices` needs libtpu (`pip install 'gkd_jax[tpu]'`); it opens no TPU and needs no network:
`jax.experimental.topologies.get_topology_desc` describes the slice and `jax.jit(...).lower(...)
.compile()` on a mesh of its devices runs the real XLA:TPU and Mosaic compilers.

`avoid_absent_tpu` (run by `import gkd_jax`) keeps jax from starting libtpu on a host that has none.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import re
import sys

# Per chip, from the Cloud TPU system architecture pages (HBM in GiB; VMEM per TensorCore in MiB).
CHIPS = {
    "v4": dict(device_kind="TPU v4", hbm_gib=32, vmem_mib=16, dims=3, cores_per_chip=2),
    "v5e": dict(device_kind="TPU v5 lite", hbm_gib=16, vmem_mib=128, dims=2, cores_per_chip=1),
    "v5p": dict(device_kind="TPU v5", hbm_gib=95, vmem_mib=64, dims=3, cores_per_chip=2),
    "v6e": dict(device_kind="TPU v6 lite", hbm_gib=32, vmem_mib=128, dims=2, cores_per_chip=1),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e", "v6lite": "v6e"}
INSTALL_HINT = (
    "gkd-jax plan needs libtpu to compile for TPU: pip install 'gkd_jax[tpu]' "
    "(or pip install 'jax[tpu]==' followed by the installed jax version)"
)


class LibtpuMissing(RuntimeError):
  """libtpu is not installed (the message says how to get it)."""


def _generation(name: str) -> str:
  gen = ALIASES.get(name, name)
  if gen not in CHIPS:
    raise ValueError(
        f"--topology: unknown TPU generation {name!r}; use one of "
        f"{', '.join(sorted(CHIPS))} (or v5litepod)"
    )
  return gen


def _shape_for_chips(gen: str, chips: int) -> tuple[int, ...]:
  """The standard slice shape with `chips` chips (2D: v5e/v6e, 3D: v4/v5p)."""
  if CHIPS[gen]["dims"] == 2:
    if chips == 1:
      return (1, 1)
    shape = [2, 2]
  else:
    shape = [2, 2, 1]
  if chips < 4 or chips & (chips - 1):
    raise ValueError(
        f"--topology: {chips} chips is not a standard {gen} slice (4, 8, 16, ... "
        "chips); pass the topology itself, e.g. v5p:2x2x2"
    )
  while int(_prod(shape)) < chips:  # double the smallest dimension, the last one on ties
    i = max(range(len(shape)), key=lambda k: (-shape[k], k))
    shape[i] *= 2
  return tuple(shape)


def _prod(xs):
  out = 1
  for x in xs:
    out *= x
  return out


def parse(topology: str) -> tuple[str, tuple[int, ...]]:
  """(generation, chip grid) from "v5p-64" / "v5litepod-16" / "v6e-8" / "v4-32" / "v5p:4x4x2"."""
  text = topology.strip().lower()
  m = re.fullmatch(r"(v\d+[a-z]*)[:=]((?:\d+x)+\d+)", text)
  if m:
    gen = _generation(m.group(1))
    shape = tuple(int(x) for x in m.group(2).split("x"))
    if len(shape) != CHIPS[gen]["dims"] or min(shape) < 1:
      raise ValueError(
          f"--topology={topology!r}: {gen} topologies have {CHIPS[gen]['dims']} "
          "positive dimensions, e.g. " + ("v5e:4x4" if CHIPS[gen]["dims"] == 2 else "v5p:2x2x4")
      )
    return gen, shape
  m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", text)
  if not m:
    raise ValueError(
        f"--topology={topology!r} is not an accelerator type (v5p-64, v6e-8, "
        "v5litepod-16, v4-32) or a topology (v5p:4x4x2)"
    )
  gen = _generation(m.group(1))
  cores = int(m.group(2))
  per_chip = CHIPS[gen]["cores_per_chip"]
  if cores % per_chip or cores == 0:
    raise ValueError(
        f"--topology={topology!r}: {gen} accelerator types count TensorCores "
        f"({per_chip} per chip), so the number must be a multiple of {per_chip}"
    )
  return gen, _shape_for_chips(gen, cores // per_chip)


def topology_name(topology: str) -> str:
  gen, shape = parse(topology)
  return f"{gen}:{'x'.join(str(s) for s in shape)}"


def chip_info(gen: str) -> dict:
  return dict(
      CHIPS[gen], hbm_bytes=CHIPS[gen]["hbm_gib"] * 2**30, vmem_bytes=CHIPS[gen]["vmem_mib"] * 2**20
  )


def compile_only_env():
  """Environment for compiling for TPU on a host that runs nothing on one (call before jax starts
  its backends): the host's CPU is the default backend, no libtpu lock file (another process may
  hold it), no GCE metadata queries."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


# Google's PCI vendor id and the device ids of its TPU chips, as jax lists them to tell a Cloud TPU
# VM (jax/_src/hardware_utils.py; tests/test_cpu_host.py checks the copy).
GOOGLE_PCI_VENDOR = "0x1ae0"
TPU_PCI_DEVICE_IDS = frozenset(
    {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"}
)
# What the user sets to choose jax's platforms: then nothing is changed. (TPU_LIBRARY_PATH is not
# one: importing libtpu sets it.)
PLATFORM_CHOICES = ("JAX_PLATFORMS", "JAX_FORCE_TPU_INIT", "PJRT_NAMES_AND_LIBRARY_PATHS")


def tpu_attached() -> bool:
  """Whether this host may have a TPU: a TPU chip on its PCI bus (jax's test) or a TPU device node
  (/dev/accel*, /dev/vfio/N); an unreadable PCI entry counts as one."""
  if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
    return True
  for vendor_path in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor_path) as f:
        if f.read().strip() != GOOGLE_PCI_VENDOR:
          continue
      with open(os.path.join(os.path.dirname(vendor_path), "device")) as f:
        if f.read().strip() in TPU_PCI_DEVICE_IDS:
          return True
    except OSError:
      return True
  return False


def other_pjrt_plugins() -> bool:
  """Whether a PJRT plugin (a GPU's: jax_cuda12_plugin, ...) is where jax looks for plugins."""
  if importlib.util.find_spec("jax_plugins") is not None:
    return True
  return bool(importlib.metadata.entry_points(group="jax_plugins"))


def avoid_absent_tpu() -> None:
  """Select the CPU for jax when libtpu is installed but this host has no TPU and nothing else.

  With libtpu installed (the `tpu` extra: `gkd-jax plan`, the compile-only tests) and no platform
  chosen, jax tries its TPU backend first; on a host without a TPU, libtpu then logs
  "INVALID_ARGUMENT: ... TPU_WORKER_HOSTNAMES" with a source trace on stderr before jax falls back
  to the CPU. Where the CPU is the only outcome (no TPU chip or device node, no other PJRT plugin
  such as a GPU's), this chooses it up front: JAX_PLATFORMS=cpu before jax is imported, jax's
  `jax_platforms` after. Any choice the user made (PLATFORM_CHOICES, or `jax_platforms` already
  set) is left as it is, and so is every host where a TPU may be present.
  """
  if any(name in os.environ for name in PLATFORM_CHOICES):
    return
  runtime = libtpu_available() or "TPU_LIBRARY_PATH" in os.environ  # what jax's TPU backend loads
  if not runtime or tpu_attached() or other_pjrt_plugins():
    return
  jax = sys.modules.get("jax")
  if jax is None:
    os.environ["JAX_PLATFORMS"] = "cpu"
  elif jax.config.jax_platforms is None:
    jax.config.update("jax_platforms", "cpu")


def tpu_devices(topology: str):
  """The devices of a TPU slice (no TPU needed); raises LibtpuMissing without libtpu."""
  gen, shape = parse(topology)
  if not libtpu_available():
    raise LibtpuMissing(INSTALL_HINT)
  compile_only_env()
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

  kwargs = {}
  if _prod(shape) == 1:  # a single chip is smaller than the default host (2x2x1 chips)
    kwargs["chips_per_host_bounds"] = (1, 1, 1)
  name = f"{gen}:{'x'.join(str(s) for s in shape)}"
  return list(topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs).devices)
