"""Training from the teacher cache (gkd.teacher_cache, λ=0): the teacher is never loaded, and with
k = V the run's losses equal those of the same run with the live teacher in memory."""

import json
import os

import pytest

from configs import arithmetic
from gkd_jax import loading, programs, teacher_cache, testing, train

V = 32  # the arithmetic tokenizer's vocabulary


def _config(d, **gkd):
  c = arithmetic.get_config()
  c.student.path, c.teacher.path = testing.save_tiny_llama(
      d / "student", seed=1, num_layers=1
  ), str(d / "teacher")
  c.gkd.lmbda, c.gkd.loss, c.gkd.temperature = 0.0, "jsd", 1.3
  c.gkd.teacher_cache_k = V
  c.train.batch_size, c.train.num_steps, c.train.log_every = 8, 4, 1
  c.train.eval_every, c.train.checkpoint_every, c.train.async_checkpoints = 0, 4, False
  c.eval.batch_size, c.data.eval_path, c.task.name = 8, "", ""
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  for field, value in gkd.items():
    c.gkd[field] = value
  return c


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
  d = tmp_path_factory.mktemp("cache_train")
  testing.save_tiny_llama(d / "teacher", seed=2, num_layers=2)
  teacher_cache.write_cache(_config(d), str(d / "cache"), records_per_shard=4096)
  return d


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [(r["step"], r["loss"], r["divergence"]) for r in rows if "loss" in r]


def test_cache_run_never_loads_the_teacher_and_matches_the_live_teacher(cached, monkeypatch):
  live = _config(cached)
  train.train(live, str(cached / "live"))
  loads = []
  original = loading.load_model
  monkeypatch.setattr(
      loading, "load_model", lambda spec, *a: (loads.append(spec.where), original(spec, *a))[1]
  )
  train.train(_config(cached, teacher_cache=str(cached / "cache")), str(cached / "cached"))
  assert loads == ["student"]  # the teacher is never read
  want, got = _losses(cached / "live"), _losses(cached / "cached")
  assert len(got) == len(want) == 4
  for (s1, l1, d1), (s2, l2, d2) in zip(want, got):
    assert s1 == s2 and l2 == pytest.approx(l1, rel=2e-5) and d2 == pytest.approx(d1, rel=2e-5)


def test_a_cache_of_another_run_is_refused_at_start_up(cached):
  config = _config(cached, teacher_cache=str(cached / "cache"), temperature=1.0)
  with pytest.raises(ValueError, match="temperature"):
    train.build(config)


@pytest.mark.parametrize(
    "gkd", [dict(lmbda=1.0), dict(lmbda=0.5, mixing="example"), dict(lmbda=0.0, seq_kd=True)]
)
def test_the_cache_needs_whole_off_policy_steps(cached, gkd):
  config = _config(cached, teacher_cache=str(cached / "cache"), **gkd)
  with pytest.raises(ValueError, match="off-policy as a whole"):
    train.build(config)


def test_mixed_lambda_runs_off_policy_steps_on_the_cache_and_matches_the_live_teacher(
    cached, monkeypatch
):
  def config(**extra):
    c = _config(cached, lmbda=0.5, mixing="batch", **extra)
    c.train.num_steps = c.train.checkpoint_every = 8
    return c

  train.train(config(), str(cached / "live_mixed"))
  used_cache = []
  original = programs.step_program

  def spy(run, steps, step, local):
    out = original(run, steps, step, local)
    used_cache.append(out[1] is None)  # no teacher parameters: the cache's program
    return out

  monkeypatch.setattr(programs, "step_program", spy)
  train.train(config(teacher_cache=str(cached / "cache")), str(cached / "cached_mixed"))

  def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return [r for r in map(json.loads, f) if "loss" in r]

  want, got = rows(cached / "live_mixed"), rows(cached / "cached_mixed")
  on_policy = [r["on_policy_fraction"] for r in want]
  assert [r["on_policy_fraction"] for r in got] == on_policy  # the same coins
  assert 0 < sum(on_policy) < len(on_policy)  # both kinds of step happened
  assert used_cache == [f == 0 for f in on_policy]  # the teacher ran on on-policy steps only
  for w, g in zip(want, got):
    assert g["loss"] == pytest.approx(w["loss"], rel=2e-5)
