"""The run directory: lock, config record, atomic writes, torn metrics (no jax, no training)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from gkd_jax import metrics, workdir

HOLD = textwrap.dedent("""
    import sys, time
    from gkd_jax import workdir
    lock = workdir.acquire_lock(sys.argv[1])
    print("held", flush=True)
    time.sleep(60)
""")


def _config(**over):
  c = ml_collections.ConfigDict(
      {
          "seed": 0,
          "gkd": {"lmbda": 0.5, "kernel_impl": "auto"},
          "optim": {"schedule": "cosine", "warmup_steps": 0, "grad_accum_steps": 1},
          "train": {"num_steps": 10, "log_every": 1, "batch_size": 8},
          "data": {"train_path": over.pop("train_path", "")},
          "mesh": {"data": 1},
          "student": {"path": ""},
          "teacher": {"path": ""},
          "tokenizer": {"path": ""},
      }
  )
  for dotted, value in over.items():
    *group, name = dotted.split("__")
    (c[group[0]] if group else c)[name] = value
  return c


def test_lock_held_by_a_live_process_refuses_and_a_dead_holder_is_taken_over(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir.WorkdirBusy) as e:
      workdir.acquire_lock(str(tmp_path))
    assert f"pid {holder.pid} on host {socket.gethostname()}" in str(e.value)
  finally:
    holder.kill()
    holder.wait()
  lock = workdir.acquire_lock(str(tmp_path))  # the holder died: its lock is free
  assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
  lock.release()
  assert (tmp_path / "lock").read_text() == ""  # released: it names no holder


def test_config_record_refuses_experiment_changes_and_allows_safe_ones(tmp_path):
  data = tmp_path / "train.jsonl"
  data.write_text('{"prompt": "a"}\n')
  d = str(tmp_path / "run")
  os.makedirs(d)
  workdir.check_config(d, _config(train_path=str(data)), resuming=False)
  record = json.loads((tmp_path / "run" / "config.json").read_text())
  assert record["config"]["gkd.lmbda"] == 0.5
  workdir.check_config(
      d,
      _config(train_path=str(data), train__log_every=5, mesh__data=2, gkd__kernel_impl="chunked"),
      resuming=True,
  )
  moved = tmp_path / "moved.jsonl"
  moved.write_bytes(data.read_bytes())
  workdir.check_config(d, _config(train_path=str(moved)), resuming=True)  # same content
  with pytest.raises(ValueError) as e:
    workdir.check_config(d, _config(train_path=str(moved), gkd__lmbda=0.7, seed=1), resuming=True)
  message = str(e.value)
  assert "gkd.lmbda: 0.5 -> 0.7" in message and "--restart" in message and "\n" not in message
  with pytest.raises(ValueError, match="train.num_steps: 10 -> 20 .the learning-rate schedule"):
    workdir.check_config(d, _config(train_path=str(moved), train__num_steps=20), resuming=True)
  workdir.check_config(
      d,
      _config(train_path=str(moved), train__num_steps=20, optim__schedule="constant"),
      resuming=False,
  )
  workdir.check_config(
      d,
      _config(train_path=str(moved), train__num_steps=30, optim__schedule="constant"),
      resuming=True,
  )
  moved.write_text('{"prompt": "b"}\n')
  with pytest.raises(ValueError, match="data.train_path: the content differs"):
    workdir.check_config(
        d,
        _config(train_path=str(moved), train__num_steps=30, optim__schedule="constant"),
        resuming=True,
    )
  (tmp_path / "run" / "config.json").write_text("")
  with pytest.raises(ValueError, match="config.json: empty"):
    workdir.check_config(d, _config(), resuming=True)


def test_atomic_write_and_replace_dir_never_leave_a_partial_file(tmp_path):
  path = str(tmp_path / "summary.json")
  workdir.write_json(path, {"a": 1})
  assert workdir.read_json(path) == {"a": 1}
  assert os.listdir(tmp_path) == ["summary.json"]  # no temporary left behind
  target = tmp_path / "student"
  workdir.replace_dir(str(target), lambda d: (os.makedirs(d), open(f"{d}/w", "w").write("1")))

  def broken(d):
    os.makedirs(d)
    open(f"{d}/w", "w").write("half")
    raise OSError(28, "No space left on device")

  with pytest.raises(ValueError, match="No space left on device.*student is unchanged"):
    workdir.replace_dir(str(target), broken)
  assert (target / "w").read_text() == "1"


def test_metrics_tolerate_a_torn_last_line_but_name_a_bad_middle_one(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
  assert [r["step"] for r in metrics.read_metrics(str(path))] == [1, 2]
  writer = metrics.MetricWriter(str(tmp_path), resume_step=2, tensorboard=False)
  writer.write(3, {"loss": 0.25})
  writer.close()
  assert [r["step"] for r in metrics.read_metrics(str(path))] == [1, 2, 3]
  path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
  with pytest.raises(ValueError, match="metrics.jsonl:2"):
    metrics.read_metrics(str(path))


def test_a_record_from_before_model_scan_layers_resumes_only_as_the_loop_it_ran():
  """Records written before the field existed ran looped: resuming looped is the same run, scanned
  is not (the checkpoints hold per-layer parameters)."""
  recorded = {"config": {"gkd.lmbda": 0.5}, "identities": {}}
  looped = {"config": {"gkd.lmbda": 0.5, "model.scan_layers": False}, "identities": {}}
  scanned = {"config": {"gkd.lmbda": 0.5, "model.scan_layers": True}, "identities": {}}
  assert workdir.differences(recorded, looped) == []
  assert workdir.differences(recorded, scanned) == ["model.scan_layers: false -> true"]
