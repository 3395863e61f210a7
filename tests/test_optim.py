"""OptimConfig.build: each allowed schedule and optimizer against its closed form, fresh inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gkd_jax import optim


def _tx(num_steps=10, **kw):
  fields = dict(
      name="adamw",
      learning_rate=0.1,
      schedule="constant",
      warmup_steps=0,
      weight_decay=0.0,
      b1=0.9,
      b2=0.99,
      grad_clip=0.0,
      grad_accum_steps=1,
  )
  fields.update(kw)
  return optim.OptimConfig(**fields).build(num_steps)


def _sgd_learning_rates(num_steps, **kw):
  """The learning rate of every update, read off plain SGD (update = -lr * grad)."""
  tx = _tx(num_steps, name="sgd", b1=0.0, **kw)
  params, grads = {"w": jnp.zeros((3,))}, {"w": jnp.asarray([1.0, -2.0, 0.5])}
  state, rates, update = tx.init(params), [], jax.jit(tx.update)
  for _ in range(num_steps):
    updates, state = update(grads, state, params)
    rates.append(float(-updates["w"][0]))
  return np.asarray(rates)


@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_learning_rate_is_warmup_then_the_schedule(schedule):
  lr, warmup, steps = 0.1, 4, 20
  got = _sgd_learning_rates(steps, schedule=schedule, warmup_steps=warmup)
  want = []
  for t in range(steps):
    frac = (t - warmup) / (steps - warmup)
    want.append(
        lr * t / warmup
        if t < warmup
        else {
            "constant": lr,
            "cosine": 0.5 * lr * (1 + math.cos(math.pi * frac)),
            "linear": lr * (1 - frac),
        }[schedule]
    )
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_warmup_leaves_at_least_one_decay_update():
  got = _sgd_learning_rates(10, schedule="constant", warmup_steps=50)
  np.testing.assert_allclose(got[[0, 9]], [0.0, 0.1], rtol=1e-6)


@pytest.mark.parametrize("name", optim.NAMES)
def test_first_update_matches_the_closed_form(name):
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)}
  grads = {"w": jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)}
  tx = _tx(name=name, weight_decay=0.01)
  updates, _ = tx.update(grads, tx.init(params), params)
  g, p, lr = np.asarray(grads["w"]), np.asarray(params["w"]), 0.1
  got = np.asarray(updates["w"])
  if name == "adamw":  # bias-corrected m/sqrt(v) = g/|g| on the first step
    want = -lr * (g / (np.abs(g) + 1e-8) + 0.01 * p)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  elif name == "sgd":  # momentum starts from zero: the first step is plain SGD
    np.testing.assert_allclose(got, -lr * g, rtol=1e-6)
  else:  # adafactor: finite, a descent direction
    assert np.all(np.isfinite(got)) and np.sum(got * g) < 0


def test_clipping_and_accumulation_wrap_the_optimizer():
  params, big = {"w": jnp.ones((4,))}, {"w": jnp.full((4,), 100.0)}
  tx = _tx(4, name="sgd", b1=0.0, grad_clip=1.0)
  updates, _ = tx.update(big, tx.init(params), params)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(updates["w"])), 0.1, rtol=1e-6)
  tx = _tx(4, name="sgd", b1=0.0, grad_accum_steps=2)
  first, state = tx.update(big, tx.init(params), params)
  second, _ = tx.update({"w": jnp.zeros((4,))}, state, params)
  np.testing.assert_array_equal(np.asarray(first["w"]), 0.0)
  np.testing.assert_allclose(np.asarray(second["w"]), -0.1 * 50.0, rtol=1e-6)


def test_bad_names_are_refused_by_the_config():
  with pytest.raises(ValueError, match="optim.name='lion'"):
    optim.OptimConfig(name="lion")
  with pytest.raises(ValueError, match="optim.schedule='step'"):
    optim.OptimConfig(schedule="step")
