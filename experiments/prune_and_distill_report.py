"""Tables, results.json and figures of experiments/prune_and_distill.py (no training here).

results.json holds everything the notebook and the README read: each row's metrics per seed
(equal steps, and equal wall time where measured), the learning-rate grid's validation scores,
each run's training seconds and steps, its logged curves, and the held-out answers (seed 0).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

COLUMNS = (
    ("reverse_kl", "RKL↓"),
    ("forward_kl", "FKL↓"),
    ("teacher_logprob", "T-logp↑"),
    ("teacher_logprob_noloop", "T-logp no loops↑"),
    ("rouge_l", "ROUGE-L↑"),
    ("checkable_accuracy", "exact↑"),
    ("eos_rate", "EOS↑"),
    ("length", "length"),
    ("loop_rate", "loops↓"),
    ("repetition", "rep↓"),
)
# What a figure shows of each row (key, label, lower is better).
PLOTTED = (
    ("reverse_kl", "reverse KL to the teacher\n(own T=1 samples) ↓", True),
    ("teacher_logprob_noloop", "teacher log-prob / token\n(own samples without loops) ↑", False),
    ("rouge_l", "ROUGE-L vs the teacher's\ngreedy answer ↑", False),
    ("checkable_accuracy", "exact match,\ncheckable prompts ↑", False),
)


def _cell(values: list) -> str:
  v = np.array(values, float)
  if not len(v):
    return "n/a"
  return f"{v.mean():.3f}" + (f" ± {v.std():.3f}" if len(v) > 1 else "")


def table(rows: dict) -> str:
  """Markdown table: one row per model, mean ± std over seeds where there are several."""
  head = "| model | " + " | ".join(name for _, name in COLUMNS) + " |"
  lines = [head, "|" + " --- |" * (len(COLUMNS) + 1)]
  for name, ms in rows.items():
    cells = [_cell([m[key] for m in ms if key in m]) for key, _ in COLUMNS]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def side_by_side(prompts: list, refs: list, answers: dict, n: int) -> str:
  """The first n held-out prompts with the teacher's greedy answer and each row's (seed 0)."""
  out = []
  for i in range(min(n, len(prompts))):
    out.append(f"\n### {prompts[i]}\n")
    out.append(f"- **teacher**: {refs[i]!r}")
    for name, texts in answers.items():
      if name != "teacher":  # its greedy answer is the reference above
        out.append(f"- **{name}**: {texts[i]!r}")
  return "\n".join(out)


def read_curves(run_dir: Path) -> list[dict]:
  """The run's logged training metrics (metrics.jsonl rows that carry a loss)."""
  path = run_dir / "metrics.jsonl"
  if not path.is_file():
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if "loss" in r]


def train_seconds(run_dir: Path, upto: int = 0) -> float:
  """Wall time of the run's training steps (up to step `upto` when > 0), from the logged mean
  step times; the first interval includes compilation."""
  total, last = 0.0, 0
  for m in read_curves(run_dir):
    if "step_time_s" in m and m["step"] > last and (not upto or m["step"] <= upto):
      total += m["step_time_s"] * (m["step"] - last)
      last = m["step"]
  return total


def step_seconds(run_dir: Path) -> float:
  """Mean seconds per step after the first logged interval (compilation excluded)."""
  t, n, last = 0.0, 0, None
  for m in read_curves(run_dir):
    if "step_time_s" not in m:
      continue
    if last is not None and m["step"] > last:
      t += m["step_time_s"] * (m["step"] - last)
      n += m["step"] - last
    last = m["step"]
  if not n:
    raise ValueError(f"{run_dir}: fewer than two logged intervals, no step time")
  return t / n


def write(out_dir: Path, name: str, results: dict, markdown: str) -> None:
  """results.json, the markdown report and the figure, each written whole."""
  out_dir.mkdir(parents=True, exist_ok=True)
  for path, text in (
      (out_dir / f"{name}.json", json.dumps(results, indent=1) + "\n"),
      (out_dir / f"{name}.md", markdown),
  ):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
  plot(results, out_dir / f"{name}.png")


def plot(results: dict, path: Path) -> None:
  """One panel per plotted metric: each row's mean ± std over seeds, at equal steps (dots) and at
  equal training time (crosses, where measured); the teacher and the pruned init as lines."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows, eq = results["rows"], results.get("rows_equal_time", {})
  names = [n for n in rows if n not in ("teacher", "pruned init")]
  fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.4))
  x = np.arange(len(names))
  for ax, (key, label, _) in zip(axes, PLOTTED):
    for ref, style in (("teacher", "-"), ("pruned init", ":")):
      if rows.get(ref) and key in rows[ref][0]:
        ax.axhline(rows[ref][0][key], color="k", ls=style, lw=1, label=ref)
    for offset, source, marker, label_ in (
        (-0.1, rows, "o", "equal steps"),
        (0.1, eq, "x", "equal time"),
    ):
      v = [[m[key] for m in source.get(n, []) if key in m] for n in names]
      if not any(v):
        continue
      mean = [np.mean(a) if a else np.nan for a in v]
      sd = [np.std(a) if a else 0 for a in v]
      ax.errorbar(x + offset, mean, yerr=sd, fmt=marker, capsize=3, label=label_)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_title(label, fontsize=9)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  tmp = path.with_name(path.stem + ".tmp.png")
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)
