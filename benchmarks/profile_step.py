"""Where one gkd_jax training step spends its time: the top XLA ops / fusions from a profiler trace.

Builds the same setup as `gkd_step_vs_trl.py` (random Gemma-2 student 256x4 / teacher 512x6,
V=4096, batch 8, 32-token prompts, 64 forced new tokens, λ=1, JSD(0.5), AdamW, float32, via
`gkd_jax.train.build` + `compile_steps`), warms the step up, then runs --steps steps under
`jax.profiler.trace` and parses the trace: every XLA:CPU thunk is one event naming its HLO op.
Each op is matched with its instruction in the compiled HLO (`Compiled.as_text()`), whose
metadata names the JAX operation it came from (its op_name path). Ops can run concurrently on
XLA's thread pool, so the column "% of op time" (of the summed op time) is the honest share;
"% of step" divides by the step's wall time and may add up to more than 100.

  .venv/bin/python benchmarks/profile_step.py --out benchmarks/results/profile_step.md
  .venv/bin/python benchmarks/profile_step.py --what update   # loss + update on fixed completions

--what: step (the on-policy train_step), update (train_step with λ=0: no sampling), or sample.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gkd_step_vs_trl as bench  # pylint: disable=wrong-import-position

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?(%?[\w.\-]+)\s*=\s*(\(.*?\)|\S+)\s+(\w[\w\-]*)\(")
# Control-flow thunks span the ops of their bodies, which the trace also lists: not counted.
_CONTROL = re.compile(r"^(while|conditional|call)(\.\d+)?$")
_META = re.compile(r'op_name="([^"]*)"')


def hlo_index(hlo_text: str) -> dict:
  """HLO instruction name -> (opcode, shape, jax op_name)."""
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    name, shape, opcode = m.group(1).lstrip("%"), m.group(2), m.group(3)
    meta = _META.search(line)
    out[name] = (opcode, shape, meta.group(1) if meta else "")
  return out


def trace_events(log_dir: str) -> list:
  files = glob.glob(os.path.join(log_dir, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    raise RuntimeError(f"no *.trace.json.gz under {log_dir}")
  with gzip.open(files[0]) as f:
    data = json.load(f)
  return data["traceEvents"] if isinstance(data, dict) else data


def op_times(events, module_prefix: str) -> dict:
  """Summed microseconds and counts per HLO op of modules whose name starts with the prefix."""
  total = collections.defaultdict(float)
  count = collections.Counter()
  for e in events:
    args = e.get("args") or {}
    if e.get("ph") != "X" or "hlo_op" not in args:
      continue
    if not str(args.get("hlo_module", "")).startswith(module_prefix) or _CONTROL.match(
        args["hlo_op"]
    ):
      continue
    total[args["hlo_op"]] += float(e.get("dur", 0.0))
    count[args["hlo_op"]] += 1
  return {k: (total[k], count[k]) for k in total}


def _short(op_name: str, limit: int = 90) -> str:
  """The informative tail of a JAX op_name path (jit(train_step)/jvp(...)/.../dot_general)."""
  parts = [p for p in op_name.split("/") if p]
  text = "/".join(parts[-4:]) if len(parts) > 4 else "/".join(parts)
  return text if len(text) <= limit else "…" + text[-limit:]


def _region(op_name: str) -> str:
  """A coarse part of the step, from the op's JAX op_name path."""
  if "_sample" in op_name:
    return "sampling"
  if "while" in op_name:  # the scans over vocabulary blocks (divergence kernel, entropies)
    return "vocab-streaming scans"
  if "transpose(" in op_name:
    return "model backward"
  if "jvp(" in op_name:
    return "model forward"
  if not op_name:
    return "no metadata (copies)"
  return "update + rest"


def profile(args) -> dict:
  import jax

  with tempfile.TemporaryDirectory() as tmp:
    paths = bench.write_checkpoints(Path(tmp))
    side = bench.GkdJaxSide(args, paths)
    op = {"step": "step", "update": "update", "sample": "sample"}[args.what]
    steps = {"step": side.on, "update": side.off}.get(args.what)
    if steps is not None:
      compiled = side.compiled_train_step(steps)
    else:
      sample_fn, _ = side._sample["float32"]  # pylint: disable=protected-access
      compiled = sample_fn.lower(
          side.state.params, side.batch["prompt_tokens"], side.batch["prompt_mask"], side.rng
      ).compile()
    index = hlo_index(compiled.as_text())
    module = compiled.as_text().split("\n", 1)[0].split()[1].rstrip(",")
    for _ in range(2):  # compile and warm up outside the trace
      side.op(op)
    untraced = [side.op(op)["s"] for _ in range(args.steps)]
    log_dir = os.path.join(tmp, "trace")
    with jax.profiler.trace(log_dir):
      traced = [side.op(op)["s"] for _ in range(args.steps)]
    times = op_times(trace_events(log_dir), module)
  step_s = statistics.median(traced)
  summed = sum(t for t, _ in times.values())
  rows = []
  for name, (us, n) in sorted(times.items(), key=lambda kv: -kv[1][0]):
    opcode, shape, op_name = index.get(name, ("?", "?", ""))
    rows.append(
        dict(
            op=name,
            opcode=opcode,
            shape=shape,
            op_name=op_name,
            region=_region(op_name),
            calls_per_step=n / args.steps,
            ms_per_step=us / 1e3 / args.steps,
            share_of_ops=us / summed,
            share_of_step=us / 1e6 / args.steps / step_s,
        )
    )
  regions = collections.defaultdict(float)
  by_jax_op = collections.defaultdict(float)
  for r in rows:
    regions[r["region"]] += r["share_of_ops"]
    by_jax_op[_short(r["op_name"]) or "(no metadata)"] += r["share_of_ops"]
  return dict(
      what=args.what,
      module=module,
      batch=args.batch,
      prompt_len=args.prompt_len,
      new_tokens=args.new_tokens,
      step_s_traced=step_s,
      step_s_untraced=statistics.median(untraced),
      steps=args.steps,
      op_ms_per_step=summed / 1e3 / args.steps,
      num_ops=len(rows),
      rows=rows,
      regions=dict(regions),
      by_jax_op=dict(by_jax_op),
      versions=side.versions(),
      commit=_commit(),
      date=time.strftime("%Y-%m-%d %H:%M:%S"),
      nice=os.nice(0),
      command=" ".join(["python"] + sys.argv),
  )


def _commit() -> str:
  import gkd_step_report

  return gkd_step_report.git_commit(bench.ROOT)


def markdown(p, top: int) -> str:
  v = p["versions"]
  lines = [
      f"# Profile of one gkd_jax `{p['what']}` (benchmark sizes)",
      "",
      f"`{p['command']}` at {p['date']}, code at `{p['commit']}`, "
      f"nice {p['nice']}; jax {v['jax']}, {v['devices']}, remat={v['remat']}, "
      f"kernel_impl={v['kernel_impl']}, {v['dtype']}. Student Gemma-2 256×4, teacher 512×6, "
      f"V=4096, batch {p['batch']}, {p['prompt_len']}-token prompts, {p['new_tokens']} forced new "
      "tokens, λ=1, JSD(0.5), AdamW (as benchmarks/gkd_step_vs_trl.py).",
      "",
      f"Step wall time: {p['step_s_untraced']:.3f} s untraced, {p['step_s_traced']:.3f} s traced "
      f"(median of {p['steps']}); summed XLA op time {p['op_ms_per_step']:.0f} ms/step over "
      f"{p['num_ops']} distinct ops (module `{p['module']}`).",
      "",
      "By region (from each op's JAX op_name; % of summed op time): "
      + ", ".join(
          f"{k} {100 * s:.1f}%" for k, s in sorted(p["regions"].items(), key=lambda kv: -kv[1])
      ),
      "",
      f"## Top {top} ops",
      "",
      "| # | op | ms/step | % of op time | % of step | calls/step | region | shape | JAX op (tail) |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for i, r in enumerate(p["rows"][:top], 1):
    lines.append(
        f"| {i} | `{r['op']}` ({r['opcode']}) | {r['ms_per_step']:.1f} | "
        f"{100 * r['share_of_ops']:.1f} | {100 * r['share_of_step']:.1f} | "
        f"{r['calls_per_step']:.0f} | {r['region']} | `{r['shape'][:40]}` | "
        f"`{_short(r['op_name'])}` |"
    )
  lines += [
      "",
      f"## Top {top} JAX ops (HLO ops with the same op_name tail summed)",
      "",
      "| # | JAX op (tail of op_name) | % of op time | ms/step |",
      "| --- | --- | --- | --- |",
  ]
  ranked = sorted(p["by_jax_op"].items(), key=lambda kv: -kv[1])[:top]
  for i, (name, share) in enumerate(ranked, 1):
    lines.append(f"| {i} | `{name}` | {100 * share:.1f} | {share * p['op_ms_per_step']:.1f} |")
  lines.append("")
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--what", choices=("step", "update", "sample"), default="step")
  ap.add_argument("--steps", type=int, default=3, help="traced steps (after 2 warm-up steps)")
  ap.add_argument("--top", type=int, default=15)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--prompt-len", type=int, default=32)
  ap.add_argument("--new-tokens", type=int, default=64)
  ap.add_argument("--lr", type=float, default=1e-4)
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  ap.add_argument(
      "--out",
      default=str(bench.ROOT / "benchmarks" / "results" / "profile_step.md"),
      help="markdown path (a .json with the top 200 ops is written beside it)",
  )
  args = ap.parse_args()
  p = profile(args)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(markdown(p, args.top))
  p["rows"] = p["rows"][:200]  # the json keeps the top 200 ops
  out.with_suffix(".json").write_text(json.dumps(p, indent=1))
  print(out.read_text())


if __name__ == "__main__":
  main()
