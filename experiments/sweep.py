"""Sweep runner: one config over a grid of overrides, each point trained, then one table and one plot.

  .venv/bin/python experiments/sweep.py --config=configs/arithmetic.py --workdir=workdirs/lambda_sweep \
      --sweep=gkd.lmbda=0,0.5,1 [--sweep=gkd.loss=forward_kl,jsd] [--config.train.num_steps=500]

Every grid point (the product of all --sweep flags) trains in WORKDIR/<field=value,...> with the
normal trainer, so an interrupted sweep resumes where it stopped. WORKDIR/results.md then holds a
table (teacher accuracy, student accuracy before/after, final held-out divergence) and
WORKDIR/results.png the held-out accuracy of every point against the step.
"""

import ast
import copy
import itertools
import json
import os

from absl import app, flags
from ml_collections import config_flags

from gkd_jax import metrics, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Base config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory.")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "FIELD=V1,V2,... (dotted config field).")


def _parse(value: str):
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return value  # a plain string such as forward_kl


def grid(specs):
  """[[(field, value), ...] per point] from ["gkd.lmbda=0,0.5", ...]."""
  axes = []
  for spec in specs:
    field, _, values = spec.partition("=")
    if not values:
      raise app.UsageError(f"--sweep={spec!r} must look like FIELD=V1,V2")
    axes.append([(field, _parse(v)) for v in values.split(",")])
  return [list(point) for point in itertools.product(*axes)]


def _final(workdir, key):
  values = [
      r[key] for r in metrics.read_metrics(os.path.join(workdir, metrics.METRICS_FILE)) if key in r
  ]
  return values[-1] if values else None


def _plot(workdir, names):
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(6, 3.5))
  for name in names:
    points = [
        (r["step"], r["eval/accuracy"])
        for r in metrics.read_metrics(os.path.join(workdir, name, metrics.METRICS_FILE))
        if "eval/accuracy" in r
    ]
    if points:
      ax.plot(*zip(*points), marker=".", label=name)
  ax.set_xlabel("step")
  ax.set_ylabel("held-out accuracy")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "results.png"), dpi=100)


def main(argv):
  del argv
  if not _WORKDIR.value or not _SWEEP.value:
    raise app.UsageError("--workdir and at least one --sweep are required")
  rows, names = [], []
  for point in grid(_SWEEP.value):
    config = copy.deepcopy(_CONFIG.value)  # keeps field types (train.remat: bool or "auto")
    for field, _ in point:
      *groups, leaf = field.split(".")
      node = config
      for g in groups:
        node = node.get(g, {})
      if leaf not in node:
        raise app.UsageError(f"--sweep names {field!r}, which is not a config field")
    config.update_from_flattened_dict(dict(point))  # type-checked
    name = ",".join(f"{f}={v}" for f, v in point)
    names.append(name)
    workdir = os.path.join(_WORKDIR.value, name)
    print(f"=== {name}", flush=True)
    summary = train.train(config, workdir)
    rows.append((name, summary, _final(workdir, "eval/divergence")))
  lines = [
      "| point | teacher | student before | student after | held-out divergence |",
      "| --- | --- | --- | --- | --- |",
  ]
  fmt = lambda x: "n/a" if x is None else f"{x:.3f}"
  for name, s, div in rows:
    lines.append(
        f"| {name} | {fmt(s.get('teacher'))} | {fmt(s.get('student_before'))} | "
        f"{fmt(s.get('student_after'))} | {fmt(div)} |"
    )
  table = "\n".join(lines)
  with open(os.path.join(_WORKDIR.value, "results.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(_WORKDIR.value, "results.json"), "w") as f:
    json.dump({name: dict(s, final_eval_divergence=div) for name, s, div in rows}, f, indent=1)
  _plot(_WORKDIR.value, names)
  print(table)


if __name__ == "__main__":
  app.run(main)
