"""The trainer end to end: mesh invariance, SIGTERM + resume, and bad input through the CLI."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from gkd_jax import batches, programs, tasks, testing, train
from gkd_jax.models.hf import load_pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = tasks.asset_dir("arithmetic")
DETERMINISTIC = testing.DETERMINISTIC_METRICS


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
  """Tiny student/teacher checkpoints and a config file on the bundled task's data."""
  d = tmp_path_factory.mktemp("run")
  student = testing.save_tiny_llama(d / "student", seed=1, num_layers=1)
  teacher = testing.save_tiny_llama(d / "teacher", seed=2, num_layers=2)
  other_vocab = testing.save_tiny_llama(d / "teacher_v40", seed=3, num_layers=1, vocab_size=40)
  config = d / "config.py"
  config.write_text(f"""
from configs import arithmetic
def get_config():
  c = arithmetic.get_config()
  c.student.path, c.teacher.path = {student!r}, {teacher!r}
  c.data.max_completion_len = c.sampling.max_new_tokens = c.eval.max_new_tokens = 12
  c.gkd.lmbda, c.gkd.mixing = 0.5, "batch"
  c.train.batch_size, c.train.num_steps, c.train.log_every = 8, 12, 1
  c.train.eval_every, c.train.checkpoint_every = 0, 4
  c.train.async_checkpoints = False
  c.eval.batch_size, c.eval.num_examples = 8, 8
  c.data.eval_path, c.task.name = "", ""  # no evaluation: these tests are about the train loop
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  return c
""")
  return dict(config=str(config), student=student, teacher=teacher, other_vocab=other_vocab)


def _config(run_files):
  import runpy  # pylint: disable=import-outside-toplevel

  return runpy.run_path(run_files["config"])["get_config"]()


def _cli(run_files, workdir, *flags, devices=1, **popen):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  cmd = [
      sys.executable,
      "-m",
      "gkd_jax.main",
      "train",
      f"--config={run_files['config']}",
      f"--workdir={workdir}",
      *flags,
  ]
  return subprocess.Popen(
      cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, **popen
  )


@pytest.mark.slow
def test_same_losses_on_every_mesh(run_files):
  config = _config(run_files)
  results = {}
  for shape in [(1, 1, 1), (8, 1, 1), (2, 2, 2), (1, 4, 2)]:
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = shape
    devices = jax.devices()[: int(np.prod(shape))]
    run = train.build(config, devices=devices)
    assert (getattr(run.settings.layout, "vocab_axis", None) == "tensor") == (
        shape[2] > 1
    )  # vocab-parallel divergence
    steps = programs.compile_steps(run)
    state = steps.init_state(run.params)
    it = iter(
        batches.loader(run, config.data.train_path, batch_size=8, shuffle=True, num_epochs=-1)
    )
    losses = []
    for _ in range(3):
      state, m = steps.train_step(
          state, run.teacher_params, batches.global_batch(run, next(it)), jax.random.key(0)
      )
      losses.append(
          [
              float(m[k])
              for k in (
                  "loss",
                  "on_policy_fraction",
                  "grad_norm",
                  "student_entropy",
                  "teacher_entropy",
              )
          ]
      )
    results[shape] = np.array(losses)
  base = results[(1, 1, 1)]
  assert np.all(base[:, 0] > 0)
  for shape, got in results.items():
    np.testing.assert_allclose(got, base, rtol=1e-5, err_msg=str(shape))


@pytest.mark.parametrize("name", ["adafactor", "sgd"])
def test_other_optimizers_build_their_sharded_state(run_files, name):
  config = _config(run_files)
  config.optim.name = name
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 4, 2
  run = train.build(config, devices=jax.devices()[:8])
  steps = programs.compile_steps(run)
  state = steps.init_state(run.params)
  leaves = jax.tree.leaves(state.opt_state)
  assert leaves and all(np.all(np.isfinite(np.asarray(x))) for x in leaves)


def _train_records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r for r in records if "loss" in r}


@pytest.mark.slow
def test_sigterm_then_resume_reproduces_the_uninterrupted_run(run_files, tmp_path):
  straight = _cli(run_files, tmp_path / "straight")
  out, err = straight.communicate(timeout=600)
  assert straight.returncode == 0, err[-3000:]

  killed_dir = tmp_path / "killed"
  killed = _cli(run_files, killed_dir)
  metrics_file = killed_dir / "metrics.jsonl"
  deadline = time.time() + 600
  while time.time() < deadline and killed.poll() is None:
    if metrics_file.exists() and '"loss"' in metrics_file.read_text():
      killed.send_signal(signal.SIGTERM)
      break
    time.sleep(0.02)
  _, err = killed.communicate(timeout=600)
  assert killed.returncode != 0 and "SIGTERM" in err, err[-3000:]
  stopped_at = max(_train_records(killed_dir))
  assert stopped_at < 12, "the run finished before the signal: nothing was tested"

  resumed = _cli(run_files, killed_dir)
  _, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err[-3000:]

  a, b = _train_records(tmp_path / "straight"), _train_records(killed_dir)
  assert sorted(a) == sorted(b) == list(range(1, 13))
  for step in a:
    for key in DETERMINISTIC:
      np.testing.assert_allclose(b[step][key], a[step][key], rtol=1e-6, err_msg=f"{step} {key}")
  _, pa = load_pretrained(str(tmp_path / "straight" / "student"))
  _, pb = load_pretrained(str(killed_dir / "student"))
  jax.tree.map(np.testing.assert_array_equal, pa, pb)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--config.gkd.lmbda=1.5"], "gkd.lmbda=1.5"),
        (["--config.gkd.loss=kl"], "gkd.loss"),
        (["--config.teacher.path=/nonexistent/teacher"], "teacher.path"),
        (["--config.train.batch_size=7"], "train.batch_size=7"),
        (["--config.data.train_path={bad_jsonl}"], "bad.jsonl:3"),
        (["--config.teacher.path={other_vocab}"], "vocabulary"),
        (["--config.data.eval_path={bad_jsonl}"], "bad.jsonl:3"),
    ],
)
def test_bad_input_is_one_clear_error_and_leaves_the_workdir_alone(
    run_files, tmp_path, flags, message
):
  bad_jsonl = tmp_path / "bad.jsonl"
  bad_jsonl.write_text(
      '{"prompt": "Q: 1+2\\nA:", "completion": " 1+2=3|=3"}\n'
      '{"prompt": "Q: 2+2\\nA:", "completion": " 2+2=4|=4"}\n'
      '{"prompt": "Q: 3+2\\nA:", "completion": \n'
  )
  workdir = tmp_path / "existing"
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  flags = [f.format(bad_jsonl=bad_jsonl, other_vocab=run_files["other_vocab"]) for f in flags]
  proc = _cli(run_files, workdir, *flags, devices=2)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert message in last and "Traceback" not in err, err[-3000:]
  after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  assert after == before


def test_sample_and_eval_commands(run_files, tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  base = [sys.executable, "-m", "gkd_jax.main"]
  config = f"--config={run_files['config']}"
  proc = subprocess.run(
      base + ["sample", config, "--config.sampling.temperature=0"],
      input="Q: 12+34\\nA:\nQ: 5+6\\nA:\n",
      capture_output=True,
      text=True,
      env=env,
      cwd=ROOT,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(l) for l in proc.stdout.splitlines()]
  assert [l["prompt"] for l in lines] == ["Q: 12+34\nA:", "Q: 5+6\nA:"]
  assert all(isinstance(l["completion"], str) for l in lines)
  proc = subprocess.run(
      base
      + [
          "eval",
          config,
          f"--config.data.eval_path={ASSETS}/eval.jsonl",
          "--config.task.name=arithmetic",
      ],
      capture_output=True,
      text=True,
      env=env,
      cwd=ROOT,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout)
  assert 0.0 <= result["eval/accuracy"] <= 1.0 and result["eval/divergence"] > 0
