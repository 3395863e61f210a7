"""What a run guarantees, end to end through the `gkd-jax` CLI on tiny models: non-finite steps
stop the run, a workdir has one owner and one experiment, damaged files are survived, bad input is
one line with exit code 2, and kill -9 at any moment resumes to the uninterrupted result."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from gkd_jax import checkpoints, programs, train, workdir
from gkd_jax.models.hf import load_pretrained
from test_train import ROOT, _cli, _config, _train_records, run_files  # noqa: F401 (fixture)

DETERMINISTIC = ("loss", "divergence", "on_policy_fraction", "completion_length", "grad_norm")


def _run(run_files, wd, *flags, devices=1):
  proc = _cli(run_files, wd, *flags, devices=devices)
  _, err = proc.communicate(timeout=600)
  return proc.returncode, err


def _last_line(err):
  lines = err.strip().splitlines()
  return lines[-1] if lines else ""


def _files(d):
  return {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name != "lock"}


def _assert_same_run(a_dir, b_dir):
  a, b = _train_records(a_dir), _train_records(b_dir)
  assert sorted(a) == sorted(b) == list(range(1, 13))
  for step in a:
    for key in DETERMINISTIC:
      np.testing.assert_allclose(b[step][key], a[step][key], rtol=1e-6, err_msg=f"{step} {key}")
  _, pa = load_pretrained(str(a_dir / "student"))
  _, pb = load_pretrained(str(b_dir / "student"))
  jax.tree.map(np.testing.assert_array_equal, pa, pb)


@pytest.fixture(scope="module")
def straight(run_files, tmp_path_factory):
  """The uninterrupted 12-step run that the others must reproduce."""
  wd = tmp_path_factory.mktemp("straight") / "run"
  rc, err = _run(run_files, wd)
  assert rc == 0, err[-3000:]
  return wd


def _restore_all(run_files, wd):
  """Every checkpoint of `wd` (of a run with optim.grad_clip=0) restored, as (step, state)."""
  config = _config(run_files)
  config.mesh.data, config.optim.grad_clip = 1, 0.0
  steps = programs.compile_steps(train.build(config, devices=jax.devices()[:1]))
  manager = checkpoints.make_manager(wd / "checkpoints")
  out = []
  for step in sorted(manager.all_steps(), reverse=True):
    restored = manager.restore(
        step,
        args=checkpoints.ocp.args.Composite(
            state=checkpoints.ocp.args.StandardRestore(steps.abstract_state)
        ),
    )
    out.append((step, restored["state"]))
  return out


def _all_finite(tree):
  return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree))


def test_a_non_finite_step_stops_the_run_and_nothing_non_finite_is_written(run_files, tmp_path):
  wd = tmp_path / "nan"
  rc, err = _run(run_files, wd, "--config.optim.learning_rate=1e9", "--config.optim.grad_clip=0")
  assert rc == 3 and "Traceback" not in err, err[-3000:]
  found = re.search(r"error: step (\d+): non-finite loss, gradient or parameters", _last_line(err))
  assert found, err[-3000:]
  bad = int(found.group(1))
  assert not (wd / "student").exists()
  saved = _restore_all(run_files, wd)
  assert saved and max(s for s, _ in saved) < bad
  assert all(_all_finite(state) for _, state in saved)


def test_up_to_max_nonfinite_steps_are_skipped_and_counted(run_files, tmp_path):
  wd = tmp_path / "skip"
  rc, err = _run(
      run_files,
      wd,
      "--config.optim.learning_rate=1e9",
      "--config.optim.grad_clip=0",
      "--config.train.max_nonfinite_steps=2",
  )
  assert rc == 3, err[-3000:]
  assert len(re.findall(r"update skipped \((\d) of train.max_nonfinite_steps=2\)", err)) == 2
  assert "2 earlier bad step(s) were skipped" in _last_line(err)
  saved = _restore_all(run_files, wd)
  assert all(_all_finite(state) for _, state in saved)
  skipped = [r.get("nonfinite") for r in _train_records(wd).values()]
  assert sum(skipped) >= 2  # the logged steps whose update was not applied


def test_a_live_lock_refuses_a_second_run_and_a_dead_holders_lock_is_taken_over(
    run_files, tmp_path
):
  wd = tmp_path / "locked"
  wd.mkdir()
  lock = workdir.acquire_lock(str(wd))  # this test process is the live holder
  try:
    rc, err = _run(run_files, wd, "--config.train.num_steps=2")
    assert rc == 2, err[-3000:]
    assert f"in use by pid {os.getpid()} on host {socket.gethostname()}" in _last_line(err)
    assert not (wd / "checkpoints").exists() and not (wd / "metrics.jsonl").exists()
  finally:
    lock.release()
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (wd / "lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
  rc, err = _run(run_files, wd, "--config.train.num_steps=2")
  assert rc == 0, err[-3000:]
  assert f"taking over the lock of pid {dead.pid}" in err


def test_resume_with_another_experiment_is_refused_safe_changes_resume_restart_starts_over(
    run_files, tmp_path
):
  wd = tmp_path / "run"
  rc, err = _run(run_files, wd, "--config.train.num_steps=4")
  assert rc == 0, err[-3000:]
  before = _files(wd)
  rc, err = _run(
      run_files,
      wd,
      "--config.train.num_steps=4",
      "--config.gkd.lmbda=0.7",
      "--config.train.batch_size=16",
  )
  assert rc == 2, err[-3000:]
  last = _last_line(err)
  assert (
      "gkd.lmbda: 0.5 -> 0.7" in last
      and "train.batch_size: 8 -> 16" in last
      and "--restart" in last
  ), last
  assert _files(wd) == before
  rc, err = _run(
      run_files,
      wd,
      "--config.train.num_steps=4",
      "--config.train.log_every=2",
      "--config.train.keep_checkpoints=5",
  )
  assert rc == 0, err[-3000:]
  rc, err = _run(run_files, wd, "--config.train.num_steps=4", "--config.gkd.lmbda=0.7", "--restart")
  assert rc == 0, err[-3000:]
  assert json.loads((wd / "config.json").read_text())["config"]["gkd.lmbda"] == 0.7
  steps = [json.loads(l)["step"] for l in open(wd / "metrics.jsonl") if '"loss"' in l]
  assert steps == [1, 2, 3, 4]  # one run's lines, not two


def _damage(ckpt, how):
  biggest = max((p for p in ckpt.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  raw = bytearray(biggest.read_bytes())
  if how == "flip":
    raw[100:164] = bytes(b ^ 0xFF for b in raw[100:164])
  else:
    raw = raw[: len(raw) // 2]
  biggest.write_bytes(bytes(raw))


def test_damaged_newest_checkpoint_and_torn_files_resume_to_the_same_run(
    run_files, straight, tmp_path
):
  wd = tmp_path / "run"
  shutil.copytree(straight, wd)
  for how in ("flip", "truncate"):
    shutil.rmtree(wd / "student")
    _damage(wd / "checkpoints" / "12", how)
    if how == "flip":  # a crash in the middle of writing them
      (wd / "summary.json").write_text("")
      with open(wd / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "lo')
    rc, err = _run(run_files, wd)
    assert rc == 0, err[-3000:]
    warning = [l for l in err.splitlines() if "is damaged" in l]
    assert len(warning) == 1 and "checkpoints/12" in warning[0], err[-3000:]
    assert os.path.isdir(wd / "checkpoints.damaged" / ("12" if how == "flip" else "12.1"))
    _assert_same_run(straight, wd)


def test_sample_cuts_an_over_long_prompt_with_a_warning(run_files):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "gkd_jax.main",
          "sample",
          f"--config={run_files['config']}",
          "--config.sampling.temperature=0",
          "--config.sampling.max_new_tokens=4",
      ],
      input="Q: " + "1+" * 40 + "1\\nA:\n",
      capture_output=True,
      text=True,
      env=env,
      cwd=ROOT,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "keeping its last 16" in proc.stderr
  assert len(proc.stdout.splitlines()) == 1


def _bad_student(tmp_path, run_files, how):
  d = tmp_path / "student"
  shutil.copytree(run_files["student"], d)
  if how == "invalid_json":
    (d / "config.json").write_text("{not json")
  elif how == "bad_field":
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = "two"
    (d / "config.json").write_text(json.dumps(cfg))
  elif how == "garbage_weights":
    (d / "model.safetensors").write_bytes(os.urandom(4096))
  elif how == "escaping_index":
    os.rename(d / "model.safetensors", tmp_path / "outside.safetensors")
    names = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import json,sys; from safetensors import safe_open; "
                f"print(json.dumps(list(safe_open({str(tmp_path / 'outside.safetensors')!r}, "
                "'np').keys())))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {n: "../outside.safetensors" for n in names}})
    )
  return str(d)


@pytest.mark.parametrize(
    "case, message",
    [
        ("non_utf8_jsonl", "bad.jsonl:2: not UTF-8"),
        ("invalid_json", "config.json"),
        ("bad_field", "config.json (student.path)"),
        ("garbage_weights", "model.safetensors: not a readable safetensors file"),
        ("escaping_index", "is not a file name in the checkpoint folder"),
        ("typo_field", "--config.gkd.lmbd: no such config field"),
        ("missing_config", "nonexistent.py: no such file"),
        ("workdir_is_a_file", "exists and is not a directory"),
        ("prompts_is_a_dir", "is not a file"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(run_files, tmp_path, case, message):
  wd = tmp_path / "existing"
  wd.mkdir()
  (wd / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
  before = _files(wd)
  flags, command = [], "train"
  if case == "non_utf8_jsonl":
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "Q: 1+2\\nA:"}\n{"prompt": "Q: \xff\xfe"}\n')
    flags = [f"--config.data.train_path={bad}"]
  elif case in ("invalid_json", "bad_field", "garbage_weights", "escaping_index"):
    flags = [f"--config.student.path={_bad_student(tmp_path, run_files, case)}"]
  elif case == "typo_field":
    flags = ["--config.gkd.lmbd=0.5"]
  elif case == "workdir_is_a_file":
    wd = tmp_path / "a_file"
    wd.write_text("x")
    before = {}
  elif case == "prompts_is_a_dir":
    command, flags = "sample", [f"--prompts={tmp_path}"]
  config = str(tmp_path / "nonexistent.py") if case == "missing_config" else run_files["config"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  cmd = [sys.executable, "-m", "gkd_jax.main", command, f"--config={config}", *flags]
  if command == "train":
    cmd.append(f"--workdir={wd}")
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert message in _last_line(proc.stderr) and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  if wd.is_dir():
    assert _files(wd) == before


KILLER = textwrap.dedent("""
    # Runs `gkd-jax train` and SIGKILLs itself at the KILL_NTH call of the function KILL_AT names.
    import os, signal, sys
    point, nth = os.environ["KILL_AT"], int(os.environ["KILL_NTH"])
    calls = [0]

    def dying(fn):
      def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
          os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
      return wrapped

    if point == "checkpoint_finalize":  # the items are written, the step not yet renamed
      import orbax.checkpoint as ocp
      ocp.CheckpointManager._finalize = dying(ocp.CheckpointManager._finalize)
    elif point == "checksums":  # the checkpoint is complete, its checksums not yet written
      from gkd_jax import checkpoints
      checkpoints._digest = dying(checkpoints._digest)
    elif point == "export":  # the exported student is half written
      import safetensors.numpy
      safetensors.numpy.save_file = dying(safetensors.numpy.save_file)
    from gkd_jax import main
    sys.argv = ["gkd-jax", *sys.argv[1:]]
    main.run()
""")


@pytest.mark.slow
def test_kill_9_at_any_moment_then_resume_reproduces_the_uninterrupted_run(
    run_files, straight, tmp_path
):
  script = tmp_path / "killer.py"
  script.write_text(KILLER)
  wd = tmp_path / "killed"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  cmd = [sys.executable, str(script), "train", f"--config={run_files['config']}", f"--workdir={wd}"]
  # Orbax saves steps 1, 4, 8, 12: the 2nd finalize is step 4's; on the resume from step 1 the 1st
  # digest verifies step 1 and the 2nd records step 4's checksums.
  for point, nth in (("checkpoint_finalize", 2), ("checksums", 2), ("metrics", 0), ("export", 1)):
    proc = subprocess.Popen(
        cmd,
        env=dict(env, KILL_AT=point, KILL_NTH=str(nth)),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if point == "metrics":  # a moment of the loop itself, from outside
      start = max(_train_records_tolerant(wd), default=0)
      deadline = time.time() + 300
      while time.time() < deadline and proc.poll() is None:
        if max(_train_records_tolerant(wd), default=0) > start:
          proc.send_signal(signal.SIGKILL)
          break
        time.sleep(0.01)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, (point, err[-3000:])
  rc, err = _run(run_files, wd)
  assert rc == 0, err[-3000:]
  _assert_same_run(straight, wd)


def _train_records_tolerant(wd):
  from gkd_jax import metrics  # pylint: disable=import-outside-toplevel

  return {r["step"] for r in metrics.read_metrics(str(wd / "metrics.jsonl")) if "loss" in r}
