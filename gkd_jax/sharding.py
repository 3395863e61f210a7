"""Device mesh from the config, logical-axis rules, and the shardings of parameters and batches.

The mesh always has the axes ("data", "fsdp", "tensor"). Parameters carry logical axis names
(`embed`, `mlp`, `heads`, `kv_heads`, `head_dim`, `vocab`, and `layers` on a scanned model's
stacked params); `config.sharding_rules` maps each name to
mesh axes, e.g. the default FSDP on `embed` and tensor parallelism on `mlp`, `heads`, `kv_heads` and
`vocab`. Batches shard their leading dim over the 'batch' rule (default ("data", "fsdp")).

Two forgiving rules keep one rules table valid for every model and mesh:
  * a mesh axis already used by an earlier dim of the same array is dropped (a spec may not use an
    axis twice, e.g. `heads` and `kv_heads` both on "tensor" in one attention weight);
  * with `shapes` given, a dim that its mesh axes do not divide is sharded over the longest prefix of
    those axes that does divide it, or replicated (tiny test models: 4 heads on an 8-way axis).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
# The names `sharding_rules` may map: the batch dim of batches and the parameters' logical axes.
# `layers` is the leading axis of a scan_layers model's stacked params: no default rule names it,
# so it stays replicated (each device holds its share of every layer, and the scan walks them).
LOGICAL_AXES = ("batch", "embed", "mlp", "heads", "kv_heads", "head_dim", "vocab", "layers")
DEFAULT_BATCH_AXES = ("data", "fsdp")


def _get(cfg, name):
  return cfg[name] if isinstance(cfg, dict) else getattr(cfg, name)


def _fail(field: str, value: Any, message: str):
  raise ValueError(f"{field}={value!r} {message}")


def resolve_mesh_shape(mesh, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) with the one -1 replaced by the remaining devices; ValueError if no fit.

  `mesh` maps each of MESH_AXES to a positive size or -1 (a dict or the config's `mesh` group)."""
  sizes = []
  for axis in MESH_AXES:
    v = _get(mesh, axis)
    if isinstance(v, bool) or not isinstance(v, int) or (v < 1 and v != -1):
      _fail(f"mesh.{axis}", v, "must be a positive integer or -1 (fill with remaining devices)")
    sizes.append(v)
  fills = [a for a, v in zip(MESH_AXES, sizes) if v == -1]
  if len(fills) > 1:
    _fail(
        f"mesh.{fills[1]}",
        -1,
        f"is a second -1 (also mesh.{fills[0]}); at most one axis "
        "may fill the remaining devices",
    )
  fixed = math.prod(v for v in sizes if v != -1)
  shape_str = "x".join(str(v) for v in sizes)
  if fills:
    if num_devices % fixed:
      raise ValueError(
          f"mesh={shape_str} does not fit {num_devices} devices: {num_devices} is not "
          f"divisible by {fixed}"
      )
    sizes = [num_devices // fixed if v == -1 else v for v in sizes]
  elif fixed != num_devices:
    raise ValueError(
        f"mesh={shape_str} needs {fixed} devices but {num_devices} are available "
        "(set one axis to -1 to fill)"
    )
  return tuple(sizes)


def make_mesh(mesh_config, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """Mesh ("data", "fsdp", "tensor") from config sizes; one size may be -1 (fill the rest).

  `mesh_config` is the config's `mesh` group (or a dict). Raises ValueError naming the shape and the
  device count when they do not fit. Devices are laid out by `mesh_utils.create_device_mesh`, which
  puts the last axis ("tensor") on the fastest interconnect of a TPU slice.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_config, len(devices))
  try:
    grid = mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, AssertionError, NotImplementedError):
    grid = np.asarray(devices, dtype=object).reshape(shape)  # e.g. a subset of a TPU slice
  return Mesh(grid, MESH_AXES)


def _rules_dict(rules) -> dict:
  out = {}
  for name, axes in rules:
    out.setdefault(name, axes)  # the first rule for a name wins
  return out


def _as_tuple(axes) -> tuple:
  if axes is None:
    return ()
  if isinstance(axes, str):
    return (axes,)
  return tuple(axes)


def _entry(axes: tuple):
  if not axes:
    return None
  return axes[0] if len(axes) == 1 else axes


def logical_to_pspec(logical_axes, rules) -> PartitionSpec:
  """PartitionSpec for one array from its logical axis names (None or unknown name = replicated)."""
  table = _rules_dict(rules)
  used, entries = set(), []
  for name in tuple(logical_axes):
    axes = tuple(
        a for a in _as_tuple(table.get(name) if name is not None else None) if a not in used
    )
    used.update(axes)
    entries.append(_entry(axes))
  return PartitionSpec(*entries)


def fit_pspec(pspec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """`pspec` with every dim's mesh axes cut to the longest prefix whose size divides the dim."""
  entries = list(tuple(pspec)) + [None] * (len(shape) - len(tuple(pspec)))
  out = []
  for dim, entry in zip(shape, entries):
    axes = _as_tuple(entry)
    while axes and dim % int(np.prod([mesh.shape[a] for a in axes])):
      axes = axes[:-1]
    out.append(_entry(axes))
  return PartitionSpec(*out)


def _is_logical_leaf(x) -> bool:
  if isinstance(x, PartitionSpec):
    return True
  return isinstance(x, tuple) and all(e is None or isinstance(e, str) for e in x)


def tree_shardings(mesh: Mesh, logical_axes_tree, rules, shapes=None):
  """NamedSharding pytree for a tree of logical-axis leaves (tuples of names or PartitionSpecs).

  `shapes`: an optional matching tree of arrays / ShapeDtypeStructs; with it, dims their mesh axes do
  not divide fall back as described in the module docstring (without it, no check is made).
  """
  specs = jax.tree.map(
      lambda names: logical_to_pspec(tuple(names), rules),
      logical_axes_tree,
      is_leaf=_is_logical_leaf,
  )
  if shapes is not None:
    specs = jax.tree.map(
        lambda spec, x: fit_pspec(spec, x.shape, mesh),
        specs,
        shapes,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )
  return jax.tree.map(
      lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
  )


def batch_axes(rules) -> tuple:
  """Mesh axes of the batch dim: the 'batch' rule, default ("data", "fsdp")."""
  table = _rules_dict(rules)
  return _as_tuple(table["batch"]) if "batch" in table else DEFAULT_BATCH_AXES


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
  """Sharding of an [B, ...] batch array: dim 0 over the batch axes, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(_entry(batch_axes(rules)), *([None] * (ndim - 1))))


def per_process_batch_size(global_batch: int) -> int:
  """Rows each process loads: the global batch over the processes (must divide evenly)."""
  n = jax.process_count()
  if global_batch % n:
    raise ValueError(f"train.batch_size={global_batch} is not divisible by the {n} processes")
  return global_batch // n


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
