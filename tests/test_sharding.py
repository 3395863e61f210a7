"""Mesh construction, logical-axis rules and shardings on 8 fake CPU devices."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from gkd_jax import models, sharding, testing

RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
)
MESHES = [(1, 1, 1), (8, 1, 1), (2, 2, 2), (1, 4, 2)]


def _mesh(shape):
  n = int(np.prod(shape))
  return sharding.make_mesh(dict(zip(("data", "fsdp", "tensor"), shape)), jax.devices()[:n])


@pytest.mark.parametrize("shape", MESHES)
def test_make_mesh_shapes(shape):
  mesh = _mesh(shape)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert tuple(mesh.shape.values()) == shape
  assert sorted(d.id for d in mesh.devices.flat) == sorted(
      d.id for d in jax.devices()[: int(np.prod(shape))]
  )


def test_fill_rule_and_errors():
  assert tuple(sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 1}).shape.values()) == (4, 2, 1)
  assert tuple(sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 2}).shape.values()) == (1, 4, 2)
  with pytest.raises(ValueError, match="mesh=2x2x1 needs 4 devices but 8 are available"):
    sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 1})
  with pytest.raises(ValueError, match="mesh=3x-1x1 does not fit 8 devices"):
    sharding.make_mesh({"data": 3, "fsdp": -1, "tensor": 1})
  with pytest.raises(ValueError, match="second -1"):
    sharding.make_mesh({"data": -1, "fsdp": -1, "tensor": 1})


def test_logical_to_pspec():
  assert sharding.logical_to_pspec(("embed", "mlp"), RULES) == P("fsdp", "tensor")
  assert sharding.logical_to_pspec(("vocab", "embed"), RULES) == P("tensor", "fsdp")
  # An axis used twice in one spec is dropped the second time.
  assert sharding.logical_to_pspec(("heads", "kv_heads", "head_dim"), RULES) == P(
      "tensor", None, None
  )
  assert sharding.logical_to_pspec(("batch", None), RULES) == P(("data", "fsdp"), None)
  assert sharding.logical_to_pspec(("batch", "embed"), RULES) == P(("data", "fsdp"), None)
  assert sharding.logical_to_pspec(("unknown", "embed"), RULES) == P(None, "fsdp")
  assert sharding.logical_to_pspec((), RULES) == P()
  rules = (("embed", ("fsdp", "data")), ("embed", "tensor"))  # the first rule for a name wins
  assert sharding.logical_to_pspec(("embed",), rules) == P(("fsdp", "data"))


def _check_placement(x, arr, mesh, spec):
  """Every shard holds x[index] and has the shape the spec's mesh axes imply (numpy reference)."""
  want_shape = list(x.shape)
  for d, entry in enumerate(tuple(spec)):
    for a in sharding._as_tuple(entry):
      want_shape[d] //= mesh.shape[a]
  for shard in arr.addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), x[shard.index])
    assert shard.data.shape == tuple(want_shape)


@pytest.mark.parametrize("shape", MESHES)
def test_tree_shardings_place_arrays(shape):
  mesh = _mesh(shape)
  rng = np.random.default_rng(0)
  logical = {
      "embed": P("vocab", "embed"),
      "layers": [{"q": ("embed", "heads", "head_dim"), "up": ("embed", "mlp")}],
      "norm": ("embed",),
      "scalar": (),
  }
  params = {
      "embed": rng.normal(size=(32, 16)),
      "layers": [{"q": rng.normal(size=(16, 8, 4)), "up": rng.normal(size=(16, 24))}],
      "norm": rng.normal(size=(16,)),
      "scalar": rng.normal(size=()),
  }
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  sh = sharding.tree_shardings(mesh, logical, RULES, shapes=params)
  assert jax.tree.structure(sh) == jax.tree.structure(params)
  assert sh["layers"][0]["q"].spec == P("fsdp", "tensor", None)
  placed = jax.device_put(params, sh)
  for x, arr, s in zip(jax.tree.leaves(params), jax.tree.leaves(placed), jax.tree.leaves(sh)):
    assert isinstance(s, NamedSharding)
    _check_placement(x, arr, mesh, s.spec)


def test_indivisible_dims_fall_back():
  mesh = _mesh((2, 2, 2))
  fit = sharding.fit_pspec
  assert fit(P("tensor", "fsdp"), (3, 4), mesh) == P(None, "fsdp")
  assert fit(P(("data", "fsdp")), (6,), mesh) == P("data")  # 4 does not divide 6, 2 does
  assert fit(P(("data", "fsdp")), (5,), mesh) == P(None)
  assert fit(P("tensor"), (4, 3), mesh) == P("tensor", None)
  mesh8 = _mesh((1, 8, 1))
  logical = {"w": ("embed", "mlp"), "b": ("mlp",)}
  shapes = {
      "w": jax.ShapeDtypeStruct((12, 24), np.float32),
      "b": jax.ShapeDtypeStruct((24,), np.float32),
  }
  sh = sharding.tree_shardings(mesh8, logical, RULES, shapes=shapes)
  assert sh["w"].spec == P(None, "tensor") and sh["b"].spec == P("tensor")  # tensor has size 1
  x = np.random.default_rng(1).normal(size=(12, 24)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(jax.device_put(x, sh["w"])), x)


@pytest.mark.parametrize("shape", MESHES)
def test_batch_sharding(shape):
  mesh = _mesh(shape)
  s = sharding.batch_sharding(mesh, RULES, 2)
  assert s.spec == P(("data", "fsdp"), None)
  x = np.arange(8 * 5, dtype=np.int32).reshape(8, 5) + 7
  _check_placement(x, jax.device_put(x, s), mesh, s.spec)
  assert sharding.batch_sharding(mesh, (("batch", "data"),), 3).spec == P("data", None, None)
  assert sharding.batch_sharding(mesh, (), 1).spec == P(("data", "fsdp"))


def test_rules_can_name_every_logical_axis_a_model_uses():
  """sharding.LOGICAL_AXES (what config validation accepts in sharding_rules) covers the names on
  the parameters of every family flavour in both layer forms, and the batch dim."""
  used = {"batch"}
  for family in testing.FAMILIES:
    cfg = testing.tiny_config(family, tie_embeddings=False, qkv_bias=True, qk_norm=True)
    for scan in (False, True):
      specs = jax.tree.leaves(
          models.logical_axes(models.build(cfg, scan_layers=scan)),
          is_leaf=lambda x: isinstance(x, P),
      )
      used |= {name for spec in specs for name in spec}
  assert used == set(sharding.LOGICAL_AXES)
