"""Memory plans of the bundled large configs on Cloud TPU slices -> benchmarks/results/tpu_plans.md.

  nice -n 19 python benchmarks/tpu_plans.py                  # every row (minutes each, 2 cores)
  nice -n 19 python benchmarks/tpu_plans.py --only=gemma2_9b_to_2b@v5p-64
  python benchmarks/tpu_plans.py --render                    # rewrite the .md from the .json only
  nice -n 19 python benchmarks/tpu_plans.py --only=gemma2_9b_to_2b@v5p-8 --programs=train_step \
      --explain=benchmarks/results/memory_explain_before.md   # + the buffers live at each peak

Each row is `gkd-jax plan` (gkd_jax/plan.py) of one config on one slice: train_step (on-policy
sampler and its KV cache inside), eval_step and the eval sampler, compiled by XLA:TPU for the
slice's devices from libtpu on this host. Results accumulate in tpu_plans.json (a row is re-planned
only when asked with --only), so partial runs add up; rows never planned are listed as such.
Knobs are not re-planned here (each re-plan is another compile of the same size).
--explain=FILE.md appends each --only row's `gkd-jax plan --explain` output (gkd_jax/memory_report.py:
the buffers live at each program's peak, grouped) to FILE.md with the command and commit, and
leaves tpu_plans.json alone; --programs limits a row to some programs (a 9B train_step alone is
6-20 minutes and ~10 GB of host memory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS_JSON = os.path.join(HERE, "results", "tpu_plans.json")
RESULTS_MD = os.path.join(HERE, "results", "tpu_plans.md")

# (config, slice): each config on a slice expected to fit and a smaller one expected not to.
# Replaced after planning: Gemma 2 27B->2B was first given v5p-128 / v5p-16 and fitted on v5p-16,
# so v5p-8 replaced v5p-128; Llama 8B->1B fitted on v5p-8 (the smallest v5p slice), so v5e-4
# (16 GiB chips) replaced v5p-32, and likewise for Qwen 3 8B->1.7B; Gemma 2 27B->9B's v5p-128
# became v5p-16 (a smaller candidate); Gemma 2 9B->2B and 27B->2B fit on v5p-8, so v5litepod-8
# (16 GiB chips) was added for each; Gemma 2 27B->9B fitted neither v5p-16 nor v5p-32 until its
# config took two micro-batches per update (the plan's knob re-plan).
ROWS = (
    ("gemma2_9b_to_2b", "v5p-64"),
    ("gemma2_9b_to_2b", "v5p-8"),
    ("gemma2_9b_to_2b", "v5litepod-8"),
    ("gemma2_27b_to_2b", "v5p-16"),
    ("gemma2_27b_to_2b", "v5p-8"),
    ("gemma2_27b_to_2b", "v5litepod-8"),
    ("gemma2_27b_to_9b", "v5p-32"),
    ("gemma2_27b_to_9b", "v5p-16"),
    ("qwen3_8b_to_1p7b", "v5p-8"),
    ("qwen3_8b_to_1p7b", "v5litepod-4"),
    ("llama3_8b_to_1b", "v5p-8"),
    ("llama3_8b_to_1b", "v5litepod-4"),
)


def _key(config, topology):
  return f"{config}@{topology}"


def plan_row(config_name, topology):
  from gkd_jax import plan  # pylint: disable=import-outside-toplevel

  config = runpy.run_path(os.path.join(ROOT, "configs", f"{config_name}.py"))["get_config"]()
  start = time.perf_counter()
  _, summary = plan.plan(config, topology, replan=False, config_name=f"configs/{config_name}.py")
  summary["wall_s"] = time.perf_counter() - start
  summary["host"] = f"{platform.node()} ({os.cpu_count()} cores)"
  summary["commit"] = subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
  ).stdout.strip()
  return summary


def explain_row(config_name, topology, programs, out_md):
  """Appends the plan of `programs` with --explain's buffer tables to `out_md` (a section per row)."""
  import contextlib  # pylint: disable=import-outside-toplevel
  import io  # pylint: disable=import-outside-toplevel

  from gkd_jax import plan  # pylint: disable=import-outside-toplevel

  config = runpy.run_path(os.path.join(ROOT, "configs", f"{config_name}.py"))["get_config"]()
  text = io.StringIO()
  start = time.perf_counter()
  with contextlib.redirect_stdout(text):
    plan.plan(
        config,
        topology,
        replan=False,
        config_name=f"configs/{config_name}.py",
        explain=True,
        only=tuple(programs),
    )
  commit = subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
  ).stdout.strip()
  command = (
      f"nice -n 19 python benchmarks/tpu_plans.py --only={_key(config_name, topology)} "
      f"--programs={','.join(programs)} --explain={os.path.relpath(out_md, ROOT)}"
  )
  section = (
      f"\n## {config_name} on {topology}: {', '.join(programs)}\n\n"
      f"`{command}` at commit {commit}, {time.perf_counter() - start:.0f} s on "
      f"{platform.node()} ({os.cpu_count()} cores)\n\n```\n{text.getvalue().rstrip()}\n```\n"
  )
  print(section)
  with open(out_md, "a") as f:
    f.write(section)


def _load():
  if not os.path.exists(RESULTS_JSON):
    return {}
  with open(RESULTS_JSON) as f:
    return json.load(f)


def _save(key, row):
  """Adds one row to the JSON as it is now (rows planned meanwhile by another process stay)."""
  results = _load()
  results[key] = row
  with open(RESULTS_JSON + ".tmp", "w") as f:
    json.dump(results, f, indent=1)
  os.replace(RESULTS_JSON + ".tmp", RESULTS_JSON)
  return results


def _gib(x):
  return "-" if x is None else f"{x / 2**30:.2f}"


def render(results) -> str:
  lines = [
      "# Memory plans of the bundled large configs on Cloud TPU slices",
      "",
      "Made by `nice -n 19 python benchmarks/tpu_plans.py` (one row: `--only=CONFIG@SLICE`): ",
      "`gkd-jax plan` compiles the run's programs with XLA:TPU for the slice (libtpu on a CPU host, ",
      "no TPU, no weights). Per device, in GiB: peak = arguments + outputs - aliased + temporaries ",
      "(XLA's memory analysis). train_step includes the on-policy sampler and its KV cache. FLOPs ",
      "are XLA's per-device count of one call, a while loop's body (the decode loop) counted once.",
      "Slices: per config one expected to fit and a smaller one expected not to (replaced or",
      "added where a plan showed the first guess fits: see ROWS in the script); the verdict in",
      "a row is the plan's. Gemma 2 27B->9B needed its config changed: at 256 rows per step",
      "its train_step needed 137.0 GiB per chip on v5p-16 and 122.6 on v5p-32 (temporaries",
      "118 -> 113 GiB: more FSDP barely shrinks them; so for 27B->2B, 55 GiB on 4 and 8 chips);",
      "the plan's knob re-plan found two micro-batches of 128 (optim.grad_accum_steps=2), now",
      "in configs/gemma2_27b_to_9b.py, which the rows below plan. `not yet planned` rows were never",
      "compiled (a Gemma-2-9B-scale plan takes ~8 min of 2 idle CPU cores). compile s is wall",
      "time on the planning host, which may have been shared with other work (nice 19).",
      "A plan's compile takes 9-12 GB of host memory at these sizes: on a 24 GiB host run rows one",
      "at a time (three rows here were killed for memory when planned next to other jobs).",
      "",
      "| config | slice | devices | HBM | program | args | temp | peak | fits | compile s |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for config, topology in ROWS:
    r = results.get(_key(config, topology))
    if r is None:
      lines.append(f"| {config} | {topology} | | | not yet planned | | | | | |")
      continue
    for i, (step, p) in enumerate(r["steps"].items()):
      fits = p["error"] is None and p["peak_bytes"] <= r["hbm_bytes"]
      head = (
          f"| {config} | {topology} | {r['num_devices']} | {_gib(r['hbm_bytes'])} "
          if i == 0
          else "| | | | "
      )
      lines.append(
          f"{head}| {step} | {_gib(p['argument_bytes'])} | {_gib(p['temp_bytes'])} | "
          f"{_gib(p['peak_bytes'])} | {'yes' if fits else '**no**'} | "
          f"{p['compile_s']:.0f} |"
      )
  lines += [
      "",
      "Rows planned on: "
      + ", ".join(sorted({r.get("host", "?") for r in results.values()}) or ["-"]),
      "at commits: " + ", ".join(f"{k} {r.get('commit', '?')}" for k, r in results.items()),
  ]
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", action="append", default=[], help="CONFIG@SLICE (repeatable)")
  parser.add_argument("--render", action="store_true", help="only rewrite the markdown")
  parser.add_argument("--explain", default="", help="FILE.md: append --only rows' buffer tables")
  parser.add_argument(
      "--programs", default="train_step,eval_step,sampler", help="with --explain: which programs"
  )
  args = parser.parse_args()
  results = _load()
  known = {_key(*row) for row in ROWS}
  for key in args.only:
    if key not in known:
      sys.exit(f"--only={key!r} is not one of: {', '.join(sorted(known))}")
  if args.explain:
    for key in args.only:
      config, topology = key.split("@")
      explain_row(
          config, topology, args.programs.split(","), os.path.join(os.getcwd(), args.explain)
      )
    return
  todo = (
      []
      if args.render
      else [
          row
          for row in ROWS
          if _key(*row) in args.only or (not args.only and _key(*row) not in results)
      ]
  )
  for config, topology in todo:
    results = _save(_key(config, topology), plan_row(config, topology))
    with open(RESULTS_MD, "w") as f:
      f.write(render(results))
  with open(RESULTS_MD, "w") as f:
    f.write(render(results))
  print(f"wrote {RESULTS_MD}")


if __name__ == "__main__":
  main()
