"""The residual stream keeps the batch's rows over the mesh's batch axes: the same values, and per
device temporaries that fall with the devices (without the constraint XLA followed the FSDP-sharded
weights and sharded the hidden width, so every device held every row's activations)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from gkd_jax import models, sharding, testing
from gkd_jax.scoring import score
from test_sharding import RULES


def _setup(scan_layers, shape=(1, 8, 1)):
  cfg = testing.llama_config(
      num_layers=4, embed_dim=256, mlp_dim=1024, num_heads=4, num_kv_heads=2, head_dim=64,
      vocab_size=512,
  )  # fmt: skip
  model = models.build(cfg, jnp.float32, scan_layers)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(shape), sharding.MESH_AXES)
  psh = sharding.tree_shardings(
      mesh, models.logical_axes(model), RULES, shapes=models.param_shapes(model)
  )
  return model, mesh, psh


def _grad_fn(model, activations):
  def loss(params, tokens):
    hidden = score(model, params, tokens, return_hidden=True, activations=activations)
    return jnp.mean(jnp.square(hidden.astype(jnp.float32)))

  return jax.jit(jax.value_and_grad(loss))


def test_rows_over_the_batch_axes_cut_temporaries_and_keep_values():
  for scan_layers in (False, True):
    model, mesh, psh = _setup(scan_layers)
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        models.param_shapes(model),
        psh,
    )
    tokens = jax.ShapeDtypeStruct((32, 256), jnp.int32, sharding=rows)
    temp = {
        act is not None: _grad_fn(model, act).lower(abstract, tokens).compile().memory_analysis()
        .temp_size_in_bytes
        for act in (None, rows)
    }  # fmt: skip
    assert temp[True] * 4 < temp[False], (scan_layers, temp)

    params = jax.device_put(models.init(model, jax.random.key(1)), psh)
    toks = jax.device_put(
        jax.random.randint(jax.random.key(2), (16, 32), 0, model.config.vocab_size), rows
    )
    want = _grad_fn(model, None)(params, toks)
    got = _grad_fn(model, rows)(params, toks)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7), got, want)


def test_the_sampler_with_rows_over_the_batch_axes_draws_the_same_tokens():
  from gkd_jax.sampling import sample  # pylint: disable=import-outside-toplevel

  for scan_layers in (False, True):
    model, mesh, psh = _setup(scan_layers, shape=(2, 4, 1))
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    params = jax.device_put(models.init(model, jax.random.key(3)), psh)
    prompt = jax.device_put(
        jax.random.randint(jax.random.key(4), (8, 6), 1, model.config.vocab_size), rows
    )
    mask = jax.device_put(jnp.ones((8, 6), jnp.int32), rows)
    kw = dict(max_new_tokens=5, temperature=1.0, eos_id=0)
    want = sample(model, params, prompt, mask, jax.random.key(5), **kw)
    got = sample(model, params, prompt, mask, jax.random.key(5), activations=rows, **kw)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, rtol=1e-5, atol=1e-6)
