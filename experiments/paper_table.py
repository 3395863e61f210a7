"""The GKD paper's table in miniature: every method from one shared SFT init, several seeds.

  .venv/bin/python experiments/paper_table.py [--seeds=0,1,2] [--methods=kd,onpolicy_fkl]
      [--workdir=workdirs/paper_table] [--out=experiments/results/paper_table] [--parallel=2]
      [--control]  # also the negative control: configs/arithmetic.py (the first task, no slips)

Each (method, seed) trains with the normal trainer (`gkd-jax train --config=configs/paper_table.py`
plus the method's overrides) in WORKDIR/<method>/seed<k>, as its own process; a finished run is
skipped and an interrupted one resumes, so the whole script is resumable. Then OUT/ gets
results.json (every run's summary and curve), results.md (mean ± sd over seeds at equal steps and at
equal training time, per-seed values, per-difficulty accuracy, FLOPs per step) and plots.

Equal steps: accuracy after `train.num_steps`. Equal time: the methods that do not sample (SFT,
supervised KD) are cheaper per step, so they run `--offpolicy_steps` steps; every method is then read
at the budget T = the mean training time of on-policy GKD (λ=1, forward KL) for `train.num_steps`,
taking its last evaluation whose cumulative step time (metrics.jsonl's step_time_s) is ≤ T.
"""

import ast
import concurrent.futures
import json
import os
import subprocess
import sys

from absl import app, flags
import numpy as np

from gkd_jax import metrics

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
# name -> (label, overrides). Every method starts from the same student_init.
METHODS = {
    "sft": (
        "SFT (clean data)",
        {"gkd.lmbda": 0.0, "gkd.divergence_weight": 0.0, "gkd.ce_weight": 1.0, "teacher.path": ""},
    ),
    "kd": ("supervised KD (λ=0)", {"gkd.lmbda": 0.0}),
    "seqkd": ("SeqKD", {"gkd.lmbda": 0.0, "gkd.seq_kd": True}),
    "onpolicy_0.5": ("GKD λ=0.5, FKL", {"gkd.lmbda": 0.5}),
    "onpolicy_fkl": ("on-policy λ=1, FKL", {"gkd.lmbda": 1.0}),
    "onpolicy_rkl": ("on-policy λ=1, RKL", {"gkd.lmbda": 1.0, "gkd.loss": "reverse_kl"}),
    "onpolicy_jsd0.1": ("on-policy λ=1, JSD(0.1)", {"gkd.loss": "jsd", "gkd.beta": 0.1}),
    "onpolicy_jsd0.5": ("on-policy λ=1, JSD(0.5)", {"gkd.loss": "jsd", "gkd.beta": 0.5}),
    "onpolicy_jsd0.9": ("on-policy λ=1, JSD(0.9)", {"gkd.loss": "jsd", "gkd.beta": 0.9}),
}
OFF_POLICY = ("sft", "kd")  # no sampling: these get --offpolicy_steps for the equal-time column
CONTROL = {
    "control_kd": ("control: supervised KD", {"gkd.lmbda": 0.0}),
    "control_onpolicy": ("control: on-policy FKL", {"gkd.lmbda": 1.0}),
}
TIME_REFERENCE = "onpolicy_fkl"

_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (each method runs once per seed).")
_METHODS = flags.DEFINE_list("methods", list(METHODS), f"Subset of {list(METHODS)}.")
_WORKDIR = flags.DEFINE_string("workdir", os.path.join(ROOT, "workdirs", "paper_table"), "Runs.")
_OUT = flags.DEFINE_string(
    "out",
    os.path.join(ROOT, "experiments", "results", "paper_table"),
    "Where the tables and plots go.",
)
_STEPS = flags.DEFINE_integer("steps", 300, "train.num_steps of every method (equal steps).")
_OFF_STEPS = flags.DEFINE_integer("offpolicy_steps", 900, "Steps of SFT and supervised KD.")
_PARALLEL = flags.DEFINE_integer("parallel", 2, "Runs at a time (each its own process).")
_CONTROL = flags.DEFINE_bool("control", False, "Also run the negative control (configs/demo.py).")
_CONTROL_STEPS = flags.DEFINE_integer("control_steps", 300, "Steps of the negative control.")
_OVERRIDE = flags.DEFINE_multi_string(
    "override",
    [],
    "FIELD=VALUE for every run (e.g. " "eval.num_examples=200), after the method's own.",
)


def _command(config, workdir, overrides):
  args = [
      sys.executable,
      "-m",
      "gkd_jax.main",
      "train",
      f"--config={config}",
      f"--workdir={workdir}",
  ]
  return args + [f"--config.{k}={v}" for k, v in overrides.items()]


def _overrides():
  """--override values, typed as Python literals where they parse as one (else strings)."""
  out = {}
  for spec in _OVERRIDE.value:
    field, _, value = spec.partition("=")
    try:
      out[field] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[field] = value
  return out


def _done(workdir):
  path = os.path.join(workdir, "summary.json")
  return os.path.exists(path) and "student_after" in json.load(open(path))


def _run(job):
  name, seed, config, overrides, workdir = job
  if _done(workdir):
    return name, seed, "done before"
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "log.txt"), "a") as log:
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(_WORKDIR.value, ".jax_cache"))
    proc = subprocess.run(
        _command(config, workdir, dict(overrides, seed=seed)),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        check=False,
    )
  if proc.returncode:
    raise RuntimeError(
        f"{name} seed {seed} failed (exit {proc.returncode}); see " f"{workdir}/log.txt"
    )
  return name, seed, "trained"


def jobs():
  out = []
  paper = os.path.join(ROOT, "configs", "paper_table.py")
  for name in _METHODS.value:
    steps = _OFF_STEPS.value if name in OFF_POLICY else _STEPS.value
    for seed in map(int, _SEEDS.value):
      out.append(
          (
              name,
              seed,
              paper,
              dict(METHODS[name][1], **{"train.num_steps": steps}, **_overrides()),
              os.path.join(_WORKDIR.value, name, f"seed{seed}"),
          )
      )
  if _CONTROL.value:
    control = os.path.join(ROOT, "configs", "arithmetic.py")
    for name, (_, overrides) in CONTROL.items():
      for seed in map(int, _SEEDS.value):
        out.append(
            (
                name,
                seed,
                control,
                dict(
                    overrides,
                    **{
                        "train.num_steps": _CONTROL_STEPS.value,
                        "optim.schedule": "constant",
                        "optim.learning_rate": 1e-3,
                        "train.eval_every": 100,
                        "eval.num_examples": 480,
                        "eval.num_samples": 2,
                        "eval.teacher": False,
                    },
                ),
                os.path.join(_WORKDIR.value, name, f"seed{seed}"),
            )
        )
  return out


def curve(workdir):
  """[(step, cumulative train seconds, eval record)] of a run; compilation is not counted (the first
  logged interval's time is replaced by the run's median step time)."""
  records = metrics.read_metrics(os.path.join(workdir, metrics.METRICS_FILE))
  timed = [r for r in records if "step_time_s" in r]
  median = float(np.median([r["step_time_s"] for r in timed[1:]] or [0.0]))
  elapsed, last_step, at = 0.0, 0, {0: 0.0}
  for i, r in enumerate(timed):
    elapsed += (median if i == 0 else r["step_time_s"]) * (r["step"] - last_step)
    last_step = r["step"]
    at[r["step"]] = elapsed
  return [
      (r["step"], at.get(r["step"]), r) for r in records if "eval/accuracy" in r and r["step"] in at
  ], median


def main(argv):
  del argv
  todo = jobs()
  with concurrent.futures.ThreadPoolExecutor(_PARALLEL.value) as pool:
    for i, (name, seed, status) in enumerate(pool.map(_run, todo)):
      print(f"[{i + 1}/{len(todo)}] {name} seed {seed}: {status}", flush=True)
  import paper_table_report  # pylint: disable=import-outside-toplevel  (beside this script)

  paper_table_report.write(todo, _STEPS.value, _OUT.value, METHODS | CONTROL, TIME_REFERENCE, curve)


if __name__ == "__main__":
  app.run(main)
