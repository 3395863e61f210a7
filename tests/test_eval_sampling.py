"""Task evaluation: greedy and k samples at eval.temperature, per-difficulty metrics, and where they
land (metrics.jsonl, summary.json, the compare table), on the bundled slip-addition student."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import paper_table
from gkd_jax import evaluation, report, train
from gkd_jax.tasks import slip_addition

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), os.pardir))


def _config(**eval_fields):
  c = paper_table.get_config()
  c.teacher.path = ""  # decoding only
  c.gkd.divergence_weight, c.gkd.ce_weight = 0.0, 1.0
  c.eval.num_examples, c.eval.batch_size, c.eval.max_new_tokens = 48, 24, 88
  c.mesh.data = 1
  for k, v in eval_fields.items():
    setattr(c.eval, k, v)
  return c


@pytest.fixture(scope="module")
def run():
  import jax  # pylint: disable=import-outside-toplevel

  return train.build(_config(num_samples=3), mode="eval", devices=jax.devices()[:1])


def test_greedy_ignores_the_seed_and_sampling_does_not(run):
  greedy = [
      evaluation.eval_completions(run, run.student, run.params, 0.0, seed)[1] for seed in (0, 7)
  ]
  assert greedy[0] == greedy[1]
  sampled = [
      evaluation.eval_completions(run, run.student, run.params, 1.0, seed)[1] for seed in (0, 7)
  ]
  assert sampled[0] != sampled[1]
  prompts, _ = evaluation.eval_completions(run, run.student, run.params, 0.0, 0)
  assert len(prompts) == 48 and all(p.startswith("Q: ") for p in prompts)


def test_sampled_metrics_are_the_mean_over_k_samples_and_pass_at_k(run):
  m = evaluation.task_metrics(run, run.student, run.params)
  c = run.config
  per_sample, solved = [], np.zeros(48, bool)
  for j in range(3):  # the k decodes task_metrics documents: seeds seed+1 .. seed+k
    prompts, comps = evaluation.eval_completions(run, run.student, run.params, 1.0, c.seed + 1 + j)
    per_sample.append(slip_addition.evaluate(prompts, comps))
    solved |= [slip_addition.is_correct(p, x) for p, x in zip(prompts, comps)]
  assert m["sampled/accuracy"] == pytest.approx(np.mean([s["accuracy"] for s in per_sample]))
  assert m["sampled/pass_at_k"] == pytest.approx(solved.mean())
  assert m["sampled/pass_at_k"] >= max(s["accuracy"] for s in per_sample)
  prompts, comps = evaluation.eval_completions(run, run.student, run.params, 0.0, c.seed)
  assert m["accuracy"] == slip_addition.accuracy(prompts, comps) > 0.1  # an SFT'd student
  by_digits = {
      d: [
          slip_addition.is_correct(p, x)
          for p, x in zip(prompts, comps)
          if slip_addition.difficulty(p) == d
      ]
      for d in range(3, 8)
  }
  for d, hits in by_digits.items():
    if hits:
      assert m[f"accuracy_d{d}"] == pytest.approx(np.mean(hits))


@pytest.mark.slow
def test_task_metrics_reach_metrics_summary_and_compare(tmp_path):
  workdir = tmp_path / "run"
  overrides = [
      "--config.teacher.path=",
      "--config.gkd.lmbda=0",
      "--config.gkd.divergence_weight=0",
      "--config.gkd.ce_weight=1",
      "--config.train.num_steps=2",
      "--config.train.batch_size=8",
      "--config.eval.num_examples=16",
      "--config.eval.batch_size=8",
      "--config.eval.num_samples=2",
      "--config.train.export_final=False",
      "--config.train.async_checkpoints=False",
  ]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "gkd_jax.main",
          "train",
          f"--config={ROOT}/configs/paper_table.py",
          f"--workdir={workdir}",
          *overrides,
      ],
      env=env,
      cwd=ROOT,
      capture_output=True,
      text=True,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  summary = json.loads((workdir / "summary.json").read_text())
  for key in (
      "eval/accuracy",
      "eval/accuracy_d5",
      "eval/repair_rate",
      "eval/sampled/accuracy",
      "eval/sampled/pass_at_k",
      "eval/sampled/first_error_frac",
  ):
    assert key in summary["eval_before"] and key in summary["eval_after"], key
  assert summary["student_after"] == summary["eval_after"]["eval/accuracy"]
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {"eval/sampled/accuracy", "eval/accuracy_d3"} <= set(lines[0]) and lines[0]["step"] == 0
  table = report.compare_table([str(workdir)])
  assert "student init" in table and "after run" in table and "sampled" in table
  bad = subprocess.run(
      [sys.executable, "-m", "gkd_jax.main", "compare", str(tmp_path / "nope")],
      env=env,
      cwd=ROOT,
      capture_output=True,
      text=True,
  )
  assert bad.returncode == 2 and "summary.json" in bad.stderr
