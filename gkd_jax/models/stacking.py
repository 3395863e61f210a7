"""Per-layer <-> stacked params at the checkpoint edge, with their shardings.

HF and GGUF files name one tensor per layer (`model.layers.{i}.…`), and `hf.py` reads and writes
the per-layer params form. A `scan_layers` model runs the stacked form (api.py), so loading reads
per-layer arrays, placed with the stacked shardings less their leading `layers` dim, then stacks
them one leaf at a time into the requested sharding (the device holds the model plus one stacked
leaf at the peak, not the model twice); saving slices one layer at a time (`LayerSlice`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec


def _drop_layers_dim(sharding):
  """The sharding of one layer's slice of an array placed with `sharding`."""
  if isinstance(sharding, NamedSharding):
    return NamedSharding(sharding.mesh, PartitionSpec(*tuple(sharding.spec)[1:]))
  return sharding  # single-device or fully replicated: rank-independent


def _stacked_target(shardings, path: tuple, shape: tuple, dtype):
  """The sharding the stacked leaf at `path` ("layers", *rest) should end in, or None."""
  if shardings is None or isinstance(shardings, jax.sharding.Sharding):
    return shardings
  if callable(shardings):
    return shardings(path, jax.ShapeDtypeStruct(shape, dtype))
  for k in path:
    shardings = shardings[k]
  return shardings


def per_layer_shardings(shardings, num_layers: int):
  """`hf.read_params`' `shardings` argument for the per-layer form, from one for the stacked
  form: None, one Sharding, a stacked-form pytree, or a callable (path, ShapeDtypeStruct)."""
  if shardings is None or isinstance(shardings, jax.sharding.Sharding):
    return shardings
  if callable(shardings):

    def per_layer(path, sds):
      if path[0] != "layers":
        return shardings(path, sds)
      stacked = jax.ShapeDtypeStruct((num_layers,) + tuple(sds.shape), sds.dtype)
      return _drop_layers_dim(shardings(("layers",) + tuple(path[2:]), stacked))

    return per_layer
  one = jax.tree.map(_drop_layers_dim, shardings["layers"])
  return dict(shardings, layers={i: one for i in range(num_layers)})


def stack_placed(params: dict, shardings) -> dict:
  """`api.stack_layers(params)`, each stacked leaf placed as `shardings` (stacked form) says,
  leaf by leaf: each leaf's per-layer arrays are dropped as soon as it is stacked."""
  layers = params.pop("layers")
  num_layers = len(layers)
  flat = []
  for i in range(num_layers):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(layers.pop(i))
    flat.append([x for _, x in leaves])
  paths = [tuple(getattr(k, "key", k) for k in p) for p, _ in leaves]
  stacked = []
  for j, path in enumerate(paths):
    xs = [flat[i][j] for i in range(num_layers)]
    for row in flat:
      row[j] = None
    target = _stacked_target(
        shardings, ("layers",) + path, (num_layers,) + xs[0].shape, xs[0].dtype
    )
    stack = jax.jit(lambda *a: jnp.stack(a), out_shardings=target)
    stacked.append(stack(*xs))
    del xs
  params["layers"] = jax.tree.unflatten(treedef, stacked)
  return params


class LayerSlice(NamedTuple):
  """Layer `index` of a stacked leaf, sliced only when `materialize` is called (one layer on the
  device at a time when a stacked model is saved per layer)."""

  stacked: Any
  index: int

  @property
  def dtype(self):
    return self.stacked.dtype

  def materialize(self):
    return self.stacked[self.index]
