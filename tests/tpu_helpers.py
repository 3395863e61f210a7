"""Devices of TPU slices for compile-only tests (libtpu from the `tpu` extra; no TPU needed)."""

import functools
import json
import os

import pytest

from gkd_jax import tpu_topology
from gkd_jax.models import presets


@functools.lru_cache(maxsize=None)
def tpu_devices(topology: str):
  """The devices of `topology`; fails (skips with GKD_SKIP_TPU_COMPILE=1) when libtpu is missing."""
  if not tpu_topology.libtpu_available():
    if os.environ.get("GKD_SKIP_TPU_COMPILE") == "1":
      pytest.skip("libtpu is not installed and GKD_SKIP_TPU_COMPILE=1")
    pytest.fail(
        tpu_topology.INSTALL_HINT + " (make install brings it: pip install -e '.[test,lint,tpu]')"
    )
  return tuple(tpu_topology.tpu_devices(topology))


def write_model_config(path, preset, **changes) -> str:
  """A checkpoint folder holding only `preset`'s config.json (with `changes`): what a plan reads."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(dict(presets.preset_hf_config(preset), **changes), f)
  return str(path)
