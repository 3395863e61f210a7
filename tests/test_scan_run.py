"""model.scan_layers in a run: the scanned and the looped trainer take the same steps (student and
teacher both scanned, on a sharded mesh), and the config field is checked and resolved per platform.
"""

import jax
import numpy as np
import pytest

from configs import demo
from gkd_jax import batches, config_validation, models, programs, run_config, train


def _losses_and_params(scan_layers, steps=2):
  config = demo.get_config()
  config.model.scan_layers = scan_layers
  config.train.batch_size = 8
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  run = train.build(config, devices=jax.devices()[:8])
  assert run.student.scan_layers is scan_layers and run.teacher.scan_layers is scan_layers
  compiled = programs.compile_steps(run)
  state = compiled.init_state(run.params)
  it = iter(batches.loader(run, config.data.train_path, batch_size=8, shuffle=False, num_epochs=1))
  rows = []
  for _ in range(steps):
    batch = batches.global_batch(run, next(it))
    state, m = compiled.train_step(state, run.teacher_params, batch, jax.random.key(0))
    rows.append([float(m[k]) for k in ("loss", "grad_norm", "student_entropy", "teacher_entropy")])
  params = models.unstack_layers(state.params) if scan_layers else state.params
  return np.array(rows), jax.device_get(params)


@pytest.mark.slow
def test_scanned_run_takes_the_looped_runs_steps():
  want_rows, want_params = _losses_and_params(False)
  got_rows, got_params = _losses_and_params(True)
  np.testing.assert_allclose(got_rows, want_rows, rtol=2e-5)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got_params, want_params
  )


def test_scan_layers_field_is_checked_and_auto_follows_the_platform_and_optimizer():
  config = demo.get_config()
  cfg = run_config.from_config(config)
  assert cfg.model.scan_layers == "auto"
  scan = lambda cfg, platform: run_config.scan_layers(cfg, platform)  # noqa: E731
  assert scan(cfg, "tpu") and scan(cfg, "gpu") and not scan(cfg, "cpu")
  config.optim.name = "adafactor"  # per-layer statistics: stays looped
  assert not scan(run_config.from_config(config), "tpu")
  config.model.scan_layers = True
  with pytest.raises(ValueError, match=r"^model.scan_layers=True with optim.name='adafactor'"):
    config_validation.validate(config, num_devices=8)
  for bad in ("yes", 1):
    config.model.scan_layers = bad
    with pytest.raises(ValueError, match=rf"^model.scan_layers={bad!r} is not one of True, False"):
      config_validation.validate(config, num_devices=8)
