"""gkd_jax: on-policy knowledge distillation of language models in JAX/Flax."""

from gkd_jax import tpu_topology as _tpu_topology

__version__ = "0.1.0"

# libtpu installed on a host without a TPU: jax goes to the CPU without trying (and logging) the TPU
# first, unless the user chose a platform (tpu_topology.avoid_absent_tpu).
_tpu_topology.avoid_absent_tpu()

# Heavy submodules (jax, flax) load on first use: `import gkd_jax` stays cheap.
_LAZY = {
    "score": ("gkd_jax.scoring", "score"),
    "sample": ("gkd_jax.sampling", "sample"),
    "SampleOutput": ("gkd_jax.sampling", "SampleOutput"),
    "load_pretrained": ("gkd_jax.models.hf", "load_pretrained"),
    "save_pretrained": ("gkd_jax.models.hf", "save_pretrained"),
}


def __getattr__(name):
  if name in _LAZY:
    import importlib

    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'gkd_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
