"""Tables and plots of experiments/paper_table.py's runs (also importable from the notebooks).

  write(jobs, steps, out_dir, methods, time_reference, curve) -> results dict

results.json holds, per method, per seed: accuracy at equal steps (greedy and sampled), at equal
time, per-difficulty accuracy, repair rate, first-error position, median step time, and the curve
(step, cumulative seconds, greedy and sampled accuracy); results.md the tables; curves.png and
difficulty.png the plots.
"""

import json
import os

import numpy as np

KEYS = (
    ("accuracy", "greedy"),
    ("sampled/accuracy", "T=1"),
    ("sampled/pass_at_k", "pass@k"),
    ("sampled/repair_rate", "repair rate (T=1)"),
    ("sampled/first_error_frac", "first error (T=1)"),
)


def flops_per_step(config_path, overrides):
  """Analytic FLOPs of one training step of a config with overrides: 2·params per token forward,
  6·params with backward (attention and the unembedding's share of sampling left out)."""
  import runpy  # pylint: disable=import-outside-toplevel
  from gkd_jax import models  # pylint: disable=import-outside-toplevel
  from gkd_jax.models.hf_config import config_from_hf  # pylint: disable=import-outside-toplevel

  cfg = runpy.run_path(config_path)["get_config"]()
  cfg.update_from_flattened_dict(dict(overrides))

  def params(path):
    if not path:
      return 0
    with open(os.path.join(path, "config.json")) as f:
      return models.num_params(models.build(config_from_hf(json.load(f))))

  b, t = cfg.train.batch_size, cfg.data.max_prompt_len + cfg.data.max_completion_len
  ps, pt = params(cfg.student.path), params(cfg.teacher.path)
  sampled = cfg.data.max_prompt_len + cfg.sampling.max_new_tokens
  flops = 6 * ps * b * t + 2 * pt * b * t * (cfg.gkd.divergence_weight > 0)
  flops += cfg.gkd.lmbda * 2 * ps * b * sampled  # on-policy rows: the student samples
  flops += (1 - cfg.gkd.lmbda) * cfg.gkd.seq_kd * 2 * pt * b * sampled  # SeqKD: the teacher does
  return float(flops)


def _at_steps(curve, steps):
  rows = [r for s, _, r in curve if s == steps]
  return rows[-1] if rows else None


def _at_time(curve, budget):
  rows = [r for _, t, r in curve if t is not None and t <= budget + 1e-9]
  return rows[-1] if rows else None


def _fmt(values):
  values = [v for v in values if v is not None]
  if not values:
    return "n/a"
  return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"


def write(jobs, steps, out_dir, methods, time_reference, curve_fn):
  """Collects every finished run of `jobs`, writes results.json/.md and plots; returns results."""
  os.makedirs(out_dir, exist_ok=True)
  runs = {}
  for name, seed, config_path, overrides, workdir in jobs:
    curve, median = curve_fn(workdir)
    with open(os.path.join(workdir, "summary.json")) as f:
      summary = json.load(f)
    runs.setdefault(name, {})[seed] = dict(
        curve=[(s, t, r.get("eval/accuracy"), r.get("eval/sampled/accuracy")) for s, t, r in curve],
        at_steps=_at_steps(curve, min(steps, int(overrides["train.num_steps"]))),
        median_step_s=median,
        summary=summary,
        _curve=curve,
        workdir=os.path.relpath(workdir, os.path.dirname(out_dir)),
        flops_per_step=flops_per_step(config_path, overrides),
    )
  ref = [
      r["_curve"][-1][1]
      for r in runs.get(time_reference, {}).values()
      if r["_curve"] and r["_curve"][-1][0] == steps
  ]
  budget = float(np.mean(ref)) if ref else None
  for by_seed in runs.values():
    for r in by_seed.values():
      r["at_time"] = _at_time(r.pop("_curve"), budget) if budget is not None else None
  results = {"steps": steps, "time_budget_s": budget, "methods": {}}
  for name, by_seed in runs.items():
    results["methods"][name] = {
        "label": methods[name][0],
        "overrides": methods[name][1],
        "seeds": by_seed,
    }
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=1, sort_keys=True)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(markdown(results) + "\n")
  plot(results, out_dir)
  return results


def _values(by_seed, where, key):
  return [(r[where] or {}).get(f"eval/{key}") for r in by_seed.values()]


def markdown(results) -> str:
  """The tables of results.md (mean ± sd over seeds; per-seed values in results.json)."""
  steps, budget = results["steps"], results["time_budget_s"]
  head = " | ".join(label for _, label in KEYS)
  lines = [
      f"Equal steps ({steps} steps) — held-out exact match, mean ± sd over seeds:",
      "",
      f"| method | seeds | {head} | step time (s) | GFLOPs/step |",
      "| --- | --- |" + " --- |" * (len(KEYS) + 2),
  ]
  for m in results["methods"].values():
    by_seed = m["seeds"]
    cells = " | ".join(_fmt(_values(by_seed, "at_steps", k)) for k, _ in KEYS)
    t = np.median([r["median_step_s"] for r in by_seed.values()])
    gf = np.mean([r["flops_per_step"] for r in by_seed.values()]) / 1e9
    lines.append(f"| {m['label']} | {len(by_seed)} | {cells} | {t:.3f} | {gf:.1f} |")
  if budget is not None:
    lines += [
        "",
        f"Equal training time ({budget:.0f} s of step time, the on-policy run's "
        f"{steps} steps; compilation and evaluation not counted):",
        "",
        "| method | greedy | T=1 | steps reached |",
        "| --- | --- | --- | --- |",
    ]
    for name, m in results["methods"].items():
      if name.startswith("control"):
        continue
      by_seed = m["seeds"]
      reached = [(r["at_time"] or {}).get("step") for r in by_seed.values()]
      lines.append(
          f"| {m['label']} | {_fmt(_values(by_seed, 'at_time', 'accuracy'))} | "
          f"{_fmt(_values(by_seed, 'at_time', 'sampled/accuracy'))} | "
          f"{', '.join(str(s) for s in reached)} |"
      )
  digits = sorted(
      {
          k
          for m in results["methods"].values()
          for r in m["seeds"].values()
          for k in (r["at_steps"] or {})
          if k.startswith("eval/accuracy_d")
      },
      key=lambda k: int(k.rsplit("d", 1)[1]),
  )
  if digits:
    lines += [
        "",
        "Per difficulty (columns), greedy / T=1, equal steps:",
        "",
        "| method | " + " | ".join(k.rsplit("_", 1)[1] for k in digits) + " |",
        "| --- |" + " --- |" * len(digits),
    ]
    for name, m in results["methods"].items():
      if name.startswith("control"):
        continue
      cells = []
      for k in digits:
        g = [v for v in _values(m["seeds"], "at_steps", k[5:]) if v is not None]
        s = [v for v in _values(m["seeds"], "at_steps", "sampled/" + k[5:]) if v is not None]
        cells.append(f"{np.mean(g):.2f} / {np.mean(s):.2f}" if g and s else "n/a")
      lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
  lines += [
      "",
      "Per seed (greedy exact match at equal steps):",
      "",
      "| method | " + " | ".join(f"seed {s}" for s in _all_seeds(results)) + " |",
      "| --- |" + " --- |" * len(_all_seeds(results)),
  ]
  for m in results["methods"].values():
    cells = [
        f"{(m['seeds'][s]['at_steps'] or {}).get('eval/accuracy', float('nan')):.3f}"
        if s in m["seeds"]
        else ""
        for s in _all_seeds(results)
    ]
    lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _all_seeds(results):
  return sorted({s for m in results["methods"].values() for s in m["seeds"]})


def plot(results, out_dir):
  """curves.png: greedy and T=1 accuracy against step and against training time (mean over
  seeds); difficulty.png: greedy accuracy per difficulty at equal steps."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for name, m in results["methods"].items():
    if name.startswith("control"):
      continue
    curves = [r["curve"] for r in m["seeds"].values()]
    n = min(len(c) for c in curves)
    mean = lambda i: np.mean(
        [[row[i] if row[i] is not None else np.nan for row in c[:n]] for c in curves], axis=0
    )
    steps, secs, greedy, temp = mean(0), mean(1), mean(2), mean(3)
    (line,) = axes[0].plot(steps, greedy, marker=".", label=m["label"])
    axes[1].plot(steps, temp, marker=".", color=line.get_color())
    axes[2].plot(secs, greedy, marker=".", color=line.get_color())
  for ax, (x, y) in zip(
      axes,
      (
          ("step", "greedy exact match"),
          ("step", "T=1 exact match"),
          ("training time (s)", "greedy exact match"),
      ),
  ):
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
  if results["time_budget_s"]:
    axes[2].axvline(results["time_budget_s"], color="gray", ls="--", lw=1)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "curves.png"), dpi=90)
  plt.close(fig)
  methods = [(n, m) for n, m in results["methods"].items() if not n.startswith("control")]
  digits = sorted(
      {
          int(k.rsplit("d", 1)[1])
          for _, m in methods
          for r in m["seeds"].values()
          for k in (r["at_steps"] or {})
          if k.startswith("eval/accuracy_d")
      }
  )
  if not digits:
    return
  fig, ax = plt.subplots(figsize=(9, 3.5))
  width = 0.8 / len(methods)
  for i, (_, m) in enumerate(methods):
    vals = [
        np.mean(
            [v for v in _values(m["seeds"], "at_steps", f"accuracy_d{d}") if v is not None]
            or [np.nan]
        )
        for d in digits
    ]
    ax.bar(np.arange(len(digits)) + i * width, vals, width, label=m["label"])
  ax.set_xticks(np.arange(len(digits)) + 0.4 - width / 2, [f"{d} columns" for d in digits])
  ax.set_ylabel("greedy exact match")
  ax.legend(fontsize=7, ncol=3)
  ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "difficulty.png"), dpi=90)
  plt.close(fig)
