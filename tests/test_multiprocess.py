"""Two processes x 2 CPU devices (gloo collectives on localhost) = one 4-device run.

The path TPU pods take (`--multihost`): global batches split over processes, collectives across
them, Orbax checkpoints written by all, SIGTERM on one process stopping all at the same step,
resume, evaluation and export with every process taking part. Everything must reproduce a single
process with 4 devices.
"""

import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from gkd_jax import distributed, tasks, testing
from gkd_jax.models.hf import load_pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = tasks.asset_dir("arithmetic")
STEPS, CHECK_EVERY = 20, 4
COMPARED = testing.DETERMINISTIC_METRICS + (
    "eval/divergence",
    "eval/cross_entropy",
    "eval/accuracy",
)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
  d = tmp_path_factory.mktemp("mp")
  student = testing.save_tiny_llama(d / "student", seed=1, num_layers=1)
  teacher = testing.save_tiny_llama(d / "teacher", seed=2, num_layers=2)
  path = d / "config.py"
  path.write_text(f"""
from configs import arithmetic
def get_config():
  c = arithmetic.get_config()
  c.student.path, c.teacher.path = {student!r}, {teacher!r}
  c.data.max_completion_len = c.sampling.max_new_tokens = c.eval.max_new_tokens = 12
  c.gkd.lmbda, c.gkd.mixing = 0.5, "example"  # sampled and dataset rows in every batch
  c.train.batch_size, c.train.num_steps, c.train.log_every = 8, {STEPS}, 1
  c.train.eval_every, c.train.checkpoint_every = 10, 8
  c.train.preemption_check_every = {CHECK_EVERY}
  c.train.async_checkpoints = False
  c.eval.batch_size, c.eval.num_examples = 8, 16
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 1
  return c
""")
  return str(path)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train(config, workdir, devices, *flags):
  env = dict(
      os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu"
  )
  cmd = [
      sys.executable,
      "-m",
      "gkd_jax.main",
      "train",
      f"--config={config}",
      f"--workdir={workdir}",
      *flags,
  ]
  return subprocess.Popen(
      cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
  )


def _two_processes(config, workdir):
  port = _free_port()
  return [
      _train(
          config,
          workdir,
          2,
          "--multihost",
          f"--coordinator=127.0.0.1:{port}",
          "--num_processes=2",
          f"--process_id={i}",
      )
      for i in range(2)
  ]


def _finish(procs, timeout=900):
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=timeout))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  return outs


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _by_step(records):
  out = collections.defaultdict(dict)
  for r in records:
    out[r["step"]].update(r)
  return out


@pytest.mark.slow
def test_two_processes_reproduce_one_process_through_sigterm_and_resume(config_file, tmp_path):
  start = time.time()
  single = _train(config_file, tmp_path / "single", 4)
  ((_, err),) = _finish([single])
  assert single.returncode == 0, err[-3000:]

  work = tmp_path / "multi"
  procs = _two_processes(config_file, work)
  deadline = time.time() + 900
  metrics_file = work / "metrics.jsonl"
  sent = False
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if metrics_file.exists() and any(r.get("step", 0) > 8 and "loss" in r for r in _records(work)):
      procs[1].send_signal(signal.SIGTERM)  # one process only: the other must stop with it
      sent = True
      break
    time.sleep(0.05)
  outs = _finish(procs)
  assert sent, [e[-2000:] for _, e in outs]
  stopped = []
  for p, (_, err) in zip(procs, outs):
    assert p.returncode != 0 and "SIGTERM" in err, err[-3000:]
    stopped.append(int(re.search(r"stopped by SIGTERM/preemption at step (\d+)", err).group(1)))
  assert stopped[0] == stopped[1] < STEPS, stopped  # together, before the end
  assert stopped[0] % CHECK_EVERY == 0  # only check steps sync

  outs = _finish(_two_processes(config_file, work))
  for _, err in outs:
    assert "Traceback" not in err, err[-3000:]
  wall = time.time() - start

  single_records, multi_records = _records(tmp_path / "single"), _records(work)
  # Written once: one metrics record per train step (process 0 writes, the resume continues).
  train_steps = [r["step"] for r in multi_records if "loss" in r]
  assert train_steps == list(range(1, STEPS + 1))
  a, b = _by_step(single_records), _by_step(multi_records)
  assert sorted(a) == sorted(b)
  assert "eval/accuracy" in b[10] and "eval/divergence" in b[STEPS]  # evaluated mid-way and at end
  for step in a:
    for key in COMPARED:
      if key in a[step]:
        np.testing.assert_allclose(
            b[step][key], a[step][key], rtol=2e-6, atol=1e-7, err_msg=f"step {step} {key}"
        )
  _, pa = load_pretrained(str(tmp_path / "single" / "student"))
  _, pb = load_pretrained(str(work / "student"))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(y, x, rtol=2e-6, atol=1e-7), pa, pb)
  print(f"multi-process test wall time {wall:.0f} s")


@pytest.mark.parametrize(
    "args, message",
    [
        (("127.0.0.1:1234", None, 0), "--num_processes missing"),
        (("", 2, 0), "--coordinator missing"),
        (("localhost", 2, 0), "must be HOST:PORT"),
        (("127.0.0.1:1234", 2, 2), "--process_id=2 must be in [0, --num_processes=2)"),
        (("127.0.0.1:1234", 0, 0), "--num_processes=0 must be >= 1"),
    ],
)
def test_bad_multihost_flags_are_one_clear_error(args, message):
  with pytest.raises(ValueError) as e:
    distributed.check_args(*args)
  assert message in str(e.value)
  assert not distributed.check_args("", None, None)  # none given: auto-detect
