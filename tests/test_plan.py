"""`gkd-jax plan` and the full train_step compiled for a 4-chip TPU slice (libtpu, no TPU).

Small models on small slices: a plan of configs/gemma2_9b_to_2b.py takes minutes (benchmarks/).
"""

import json
import os
import subprocess
import sys

import pytest

from gkd_jax import plan, tpu_topology
from tpu_helpers import tpu_devices, write_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
  """A config whose student and teacher are config.json files only (no weights anywhere)."""
  d = tmp_path_factory.mktemp("plan")
  student = write_model_config(d / "student", "tiny_gemma2")  # soft-capped logits, vocab 256
  teacher = write_model_config(d / "teacher", "tiny_gemma2", num_hidden_layers=3)
  big = write_model_config(
      d / "big",
      "tiny_llama",
      vocab_size=256000,
      hidden_size=8192,
      intermediate_size=256,
      num_hidden_layers=1,
  )
  path = d / "config.py"
  path.write_text(f"""
from configs import default
def get_config():
  c = default.get_config()
  c.student.path, c.teacher.path = {student!r}, {teacher!r}
  c.data.train_path = "/not/needed/by/a/plan.jsonl"
  c.data.max_prompt_len = c.data.max_completion_len = 16
  c.sampling.max_new_tokens = c.eval.max_new_tokens = 16
  c.gkd.lmbda, c.gkd.loss = 0.5, "jsd"  # the sampler and the dataset branch are both compiled
  c.train.batch_size = c.eval.batch_size = 8
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  return c
""")
  return dict(config=str(path), big=big)


def _config(config_file, mesh):
  import runpy  # pylint: disable=import-outside-toplevel

  c = runpy.run_path(config_file["config"])["get_config"]()
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  return c


@pytest.mark.parametrize("mesh", [(4, 1, 1), (1, 4, 1), (1, 2, 2)])
def test_train_step_compiles_for_a_4_chip_slice(config_file, mesh):
  devices = tpu_devices("v5p:2x2x1")
  config = _config(config_file, mesh)
  run = plan.abstract_run(config, list(devices))
  assert run.settings.kernel_platform == "tpu"
  # (1, 2, 2) shards the vocabulary over "tensor": the vocab-parallel divergence.
  assert (getattr(run.settings.layout, "vocab_axis", None) == "tensor") == (mesh[2] > 1)
  plans = plan.plan_steps(config, list(devices), only=("train_step",))
  p = plans["train_step"]
  assert p.error is None and 0 < p.peak_bytes < 2**30 and p.flops > 0


def _cli(config, *flags):
  cmd = [sys.executable, "-m", "gkd_jax.main", "plan", f"--config={config}", *flags]
  return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1200)


def test_plan_command_fits_and_reports_json(config_file):
  proc = _cli(config_file["config"], "--topology=v5litepod-4", "--json")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["topology"] == "v5litepod-4" and summary["num_devices"] == 4
  assert summary["device_kind"] == "TPU v5 lite" and summary["hbm_bytes"] == 16 * 2**30
  assert summary["fits"] is True and set(summary["steps"]) == set(plan.STEPS)
  for step in summary["steps"].values():
    parts = step["argument_bytes"] + step["output_bytes"] - step["alias_bytes"] + step["temp_bytes"]
    assert step["peak_bytes"] == parts > 0 and step["flops"] > 0 and step["compile_s"] > 0
  assert "train_step" in proc.stdout and "fits" in proc.stdout


@pytest.mark.slow
def test_plan_that_does_not_fit_exits_1_and_replans_the_knobs(config_file):
  # A 2B-parameter one-layer model (8192 x 256000 embedding) replicated over data=4: f32 weights,
  # gradients and Adam moments (~34 GB) exceed v5e's 16 GiB; FSDP over the 4 chips (~8.4 GB) fits.
  proc = _cli(
      config_file["config"],
      "--topology=v5e:2x2",
      "--json",
      f"--config.student.path={config_file['big']}",
      "--config.gkd.divergence_weight=0",
      "--config.gkd.ce_weight=1",
      "--config.gkd.lmbda=0",
      "--config.mesh.data=4",
      "--config.mesh.fsdp=1",
  )
  assert proc.returncode == 1, proc.stderr[-3000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["fits"] is False
  assert summary["steps"]["train_step"]["peak_bytes"] > summary["hbm_bytes"]
  fold = [k for k in summary["knobs"] if k["knob"].startswith("mesh data=4 folded")]
  assert fold and fold[0]["fits"] is True, summary["knobs"]
  assert fold[0]["steps"]["train_step"] < summary["hbm_bytes"]
  assert "does NOT fit" in proc.stdout


def test_plan_command_bad_input_is_one_line_and_exit_2(config_file):
  proc = _cli(config_file["config"], "--topology=v9-8")
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("gkd-jax plan: error:") and "unknown TPU generation" in last
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "topology, changes, message",
    [
        ("v5p-6", {}, "not a standard v5p slice"),
        ("", {}, "needs --topology"),
        ("v5p-8", {"mesh": (1, 3, 1)}, "mesh"),
        ("v5p-8", {"teacher.path": "/nonexistent"}, "teacher.path='/nonexistent'"),
        ("v5p-8", {"student.preset": "gemma9"}, "student.preset='gemma9' is not a preset"),
    ],
)
def test_plan_bad_input_is_one_line_and_exit_2(config_file, capsys, topology, changes, message):
  config = _config(config_file, changes.pop("mesh", (1, -1, 1)))
  for dotted, value in changes.items():
    group, field = dotted.split(".")
    config[group][field] = value
  if "student.preset" in changes:
    config.student.path = "/no/config/json/here"
  assert plan.main(config, topology, False) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("gkd-jax plan: error:") and message in err[0], err


def test_plan_without_libtpu_says_how_to_get_it(config_file, monkeypatch, capsys):
  monkeypatch.setattr(tpu_topology, "libtpu_available", lambda: False)
  assert plan.main(_config(config_file, (1, -1, 1)), "v5p-8", False) == 2
  err = capsys.readouterr().err
  assert "pip install 'gkd_jax[tpu]'" in err


def test_accelerator_types_map_to_topologies():
  assert tpu_topology.topology_name("v5p-64") == "v5p:2x4x4"
  assert tpu_topology.topology_name("v5p-8") == "v5p:2x2x1"
  assert tpu_topology.topology_name("v5litepod-16") == "v5e:4x4"
  assert tpu_topology.topology_name("v6e-8") == "v6e:2x4"
  assert tpu_topology.topology_name("v4-32") == "v4:2x2x4"
  assert tpu_topology.topology_name("v5p:4x4x2") == "v5p:4x4x2"
  # The devices libtpu gives for an accelerator type are the slice's chips.
  assert len(tpu_devices("v5p:2x4x4")) == 32
  assert len(tpu_devices("v6e:2x4")) == 8
