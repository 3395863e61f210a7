"""train.remat policies: each gives the no-remat gradient, and each keeps what its name says.

"What it keeps" is checked three ways that a policy falling back to another cannot pass: the
backward pass's recomputed matmuls (dot_general count of the lowered program, both decoder forms:
none < save_dots < save_dots_except_mlp < full), the scanned step's compiled temporaries (the
reverse order), and `offload`'s residuals moved to host memory (device_put to Host in the jaxpr).
"""

import configs.demo
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gkd_jax
from gkd_jax import config_validation, models, remat, testing

FORMS = (False, True)  # scan_layers
IN_ORDER = ("none", "save_dots", "save_dots_except_mlp", "full")  # most saved first


def _model(scan_layers, num_layers=2, seed=0):
  """Tiny Gemma 2 (alternating sliding/global layers, soft-caps, sandwich norms), random float32
  weights with O(1) activations; stacked for the scanned form."""
  cfg = models.get_preset("tiny_gemma2")
  cfg = cfg.replace(num_layers=num_layers, layer_types=cfg.layer_types * (num_layers // 2))
  params = jax.tree.map(jnp.asarray, testing.random_params(models.build(cfg), seed))
  if scan_layers:
    params = models.stack_layers(params)
  return models.build(cfg, scan_layers=scan_layers), params


def _loss_fn(model, B, T):
  tokens = jax.random.randint(jax.random.key(1), (B, T), 0, model.config.vocab_size)
  weights = jax.random.normal(jax.random.key(2), (B, T, model.config.vocab_size))

  def loss(params, setting):
    return jnp.sum(gkd_jax.score(model, params, tokens, remat=setting) * weights)

  return loss


@pytest.mark.parametrize("scan_layers", FORMS)
def test_every_policy_gives_the_no_remat_gradient(scan_layers):
  model, params = _model(scan_layers)
  grad = jax.jit(jax.grad(_loss_fn(model, B=2, T=40)), static_argnums=1)  # T > window (32)
  want = grad(params, False)
  for setting in remat.POLICIES:  # True/False are full/none (the dot counts below)
    got = grad(params, setting)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
      scale = float(jnp.max(jnp.abs(w)))
      assert scale > 0, path
      np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5 * scale, err_msg=f"{setting} {path}")


@pytest.mark.parametrize("scan_layers", FORMS)
def test_policies_recompute_more_matmuls_in_order(scan_layers):
  """save_dots redoes only attention's batched dots (QK^T, PV), save_dots_except_mlp also the
  MLP's three, full every matmul of the block; True/False are full/none."""
  model, params = _model(scan_layers)
  grad = jax.jit(jax.grad(_loss_fn(model, B=2, T=16)), static_argnums=1)

  def dots(setting):
    return grad.lower(params, setting).as_text().count("stablehlo.dot_general")

  counts = [dots(name) for name in IN_ORDER]
  assert counts == sorted(set(counts)), dict(zip(IN_ORDER, counts))  # strictly increasing
  assert dots(True) == counts[-1] and dots(False) == counts[0]
  assert dots("offload") == dots("save_dots")  # the same values kept, only elsewhere


def test_scanned_step_temporaries_fall_in_order():
  model, params = _model(True, num_layers=4)
  grad = jax.jit(jax.value_and_grad(_loss_fn(model, B=4, T=256)), static_argnums=1)
  temp = {n: grad.lower(params, n).compile().memory_analysis().temp_size_in_bytes for n in IN_ORDER}
  assert list(temp.values()) == sorted(set(temp.values()), reverse=True), temp


def test_offload_moves_the_kept_matmuls_to_host():
  model, params = _model(True)
  loss = _loss_fn(model, B=2, T=16)
  jaxpr = {
      n: str(jax.make_jaxpr(jax.grad(loss), static_argnums=1)(params, n))
      for n in ("save_dots", "offload")
  }
  assert "MemorySpace.Host" in jaxpr["offload"]
  assert "MemorySpace.Host" not in jaxpr["save_dots"]


def test_offload_is_refused_without_host_offload():
  with pytest.raises(ValueError, match=r"^train.remat='offload' needs a TPU or GPU") as e:
    remat.check_platform("offload", "cpu")
  assert "\n" not in str(e.value)
  remat.check_platform("offload", "tpu")
  remat.check_platform("save_dots", "cpu")


def test_bad_policy_name_fails_validation_in_one_line():
  config = configs.demo.get_config()
  for ok in remat.CHOICES:
    config.train.remat = ok
    config_validation.validate(config, num_devices=1, check_paths=False)
  config.train.remat = "save_everything"
  with pytest.raises(ValueError) as e:
    config_validation.validate(config, num_devices=1, check_paths=False)
  assert str(e.value).startswith("train.remat='save_everything' is not one of True, False, auto")
  assert "\n" not in str(e.value)


def test_plan_knobs_try_save_dots_before_full():
  from gkd_jax import plan  # pylint: disable=import-outside-toplevel

  def knobs(setting):
    config = configs.demo.get_config()
    config.train.remat = setting
    return [changes.get("train.remat") for _, changes, _ in plan._knobs(config)]  # pylint: disable=protected-access

  assert knobs("auto")[:2] == ["save_dots", True] and knobs("none")[:2] == ["save_dots", True]
  assert knobs("save_dots")[0] is True and "save_dots" not in knobs("save_dots")
  assert not {"save_dots", True} & set(knobs(True) + knobs("full"))
