"""train.remat="auto": the choice follows the device's memory limit, and the compiled step it keeps
(no second compile) computes exactly what the jitted step without remat computes."""

import dataclasses

import jax
import numpy as np
import pytest

from configs import demo
from gkd_jax import batches, programs, remat, train


@pytest.fixture(scope="module")
def demo_run():
  config = demo.get_config()
  config.train.batch_size = 4
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
  run = train.build(config, devices=jax.devices()[:1])
  loader = batches.loader(run, config.data.train_path, batch_size=4, shuffle=False, num_epochs=1)
  batch = batches.global_batch(run, next(iter(loader)))
  return run, batch


def _one_step(run, batch, remat_setting, monkeypatch, limit):
  train_cfg = dataclasses.replace(run.config.train, remat=remat_setting)
  run = dataclasses.replace(run, config=dataclasses.replace(run.config, train=train_cfg))
  monkeypatch.setattr(remat, "memory_limit", lambda device: limit)
  steps = programs.compile_steps(run)
  state = steps.init_state(run.params)
  _, m = steps.train_step(state, run.teacher_params, batch, jax.random.key(0))
  return steps, {k: float(v) for k, v in jax.device_get(m).items()}


def test_auto_without_a_memory_limit_is_off(demo_run, monkeypatch):
  run, batch = demo_run
  steps, _ = _one_step(run, batch, "auto", monkeypatch, None)
  assert steps.remat is False


def test_auto_turns_remat_on_when_the_step_does_not_fit(demo_run, monkeypatch):
  run, batch = demo_run
  steps, m_auto = _one_step(run, batch, "auto", monkeypatch, 1024)  # 1 KiB: nothing fits
  assert steps.remat is True
  _, m_on = _one_step(run, batch, True, monkeypatch, None)
  assert m_auto == m_on


def test_auto_keeps_the_compiled_step_when_it_fits(demo_run, monkeypatch):
  run, batch = demo_run
  steps, m_auto = _one_step(run, batch, "auto", monkeypatch, 2**40)
  assert steps.remat is False
  assert isinstance(steps.train_step, jax.stages.Compiled)  # reused, not compiled again
  _, m_off = _one_step(run, batch, False, monkeypatch, None)
  assert m_auto == m_off
  assert np.isfinite(m_auto["loss"])


def test_a_named_policy_flows_to_the_step_and_keeps_its_numerics(demo_run, monkeypatch):
  run, batch = demo_run
  steps, m_dots = _one_step(run, batch, "save_dots", monkeypatch, None)
  assert steps.remat == "save_dots"
  _, m_off = _one_step(run, batch, False, monkeypatch, None)
  np.testing.assert_allclose([m_dots[k] for k in m_off], list(m_off.values()), rtol=1e-6)


def test_offload_is_refused_on_cpu_in_one_line(demo_run, monkeypatch):
  run, batch = demo_run
  with pytest.raises(ValueError, match=r"^train.remat='offload' needs a TPU or GPU[^\n]*$"):
    _one_step(run, batch, "offload", monkeypatch, None)
