"""Side-by-side table of finished runs: `gkd-jax compare WORKDIR [WORKDIR ...]`.

Reads each run's summary.json (written by the trainer) and prints the teacher, the shared student
init and every run's student after training: greedy exact match of the task and, when the config
sampled at evaluation (eval.num_samples > 0), exact match at eval.temperature and the repair rate.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

COLUMNS = (
    ("eval/accuracy", "greedy"),
    ("eval/sampled/accuracy", "sampled"),
    ("eval/sampled/repair_rate", "repairs"),
)


def read_summary(workdir: str) -> dict:
  path = os.path.join(workdir, "summary.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir!r} a finished gkd-jax run?")
  with open(path) as f:
    return json.load(f)


def _with_prefix(metrics: dict) -> dict:
  return {k if k.startswith("eval/") else f"eval/{k}": v for k, v in metrics.items()}


def compare_table(workdirs: Sequence[str]) -> str:
  """The table `gkd-jax compare` prints (teacher and init from the first run that has them)."""
  summaries = [read_summary(w) for w in workdirs]
  rows = []
  teacher = next((s["teacher_eval"] for s in summaries if s.get("teacher_eval")), None)
  if teacher:
    rows.append(("teacher", _with_prefix(teacher)))
  init = next((s["eval_before"] for s in summaries if s.get("eval_before")), None)
  if init:
    rows.append(("student init", init))
  for w, s in zip(workdirs, summaries):
    if "eval_after" not in s:
      raise ValueError(f"{w!r} has not finished training (no final evaluation in summary.json)")
    rows.append((f"after {os.path.basename(os.path.normpath(w))}", s["eval_after"]))
  cols = [(k, name) for k, name in COLUMNS if any(k in m for _, m in rows)]
  width = max(len(name) for name, _ in rows)
  fmt = lambda v: f"{v:8.3f}" if isinstance(v, (int, float)) else "     n/a"
  lines = [
      "",
      f"  {'model':<{width}}  " + "  ".join(f"{name:>8}" for _, name in cols),
      f"  {'-' * width}  " + "  ".join("-" * 8 for _ in cols),
  ]
  for name, m in rows:
    lines.append(f"  {name:<{width}}  " + "  ".join(fmt(m.get(k)) for k, _ in cols))
  return "\n".join(lines)
