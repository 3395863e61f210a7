"""Markdown / JSON / plot of `gkd_step_vs_trl.py` results (no jax or torch needed)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def git_commit(root: Path) -> str:
  try:
    git = lambda *a: subprocess.run(
        ["git", "-C", str(root), *a], capture_output=True, text=True, check=True
    ).stdout.strip()
    out = (
        f"HEAD {git('log', '-1', '--format=%h')}, gkd_jax/ last changed in "
        f"{git('log', '-1', '--format=%h', '--', 'gkd_jax')}"
    )
    dirty = git("status", "--porcelain", "--", "gkd_jax")
    return out + (" (gkd_jax/ modified)" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _med(cell, side, op):
  return cell[side]["times"][op]["median"]


def cell_line(c) -> str:
  return (
      f"B={c['batch']} N={c['new_tokens']}: TRL {_med(c, 'trl', 'step'):.3f} s/step, gkd_jax "
      f"{_med(c, 'gkd_jax', 'step'):.3f} s/step, ratio {c['ratio_trl_over_gkd_jax']['step']:.2f}"
  )


def _main_table(c) -> list[str]:
  t = lambda side, op: c[side]["times"][op]
  fmt = lambda s: f"{s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f})"
  r, rm = c["ratio_trl_over_gkd_jax"], c["ratio_of_minima"]
  tr_gen = t("trl", "step_generate")["median"]
  rows = [
      "| part | TRL s, median (min–max) | gkd_jax s, median (min–max) | TRL / gkd_jax: medians "
      "(minima) |",
      "| --- | --- | --- | --- |",
      f"| whole step | {fmt(t('trl', 'step'))} | {fmt(t('gkd_jax', 'step'))} "
      f"| **{r['step']:.2f}** ({rm['step']:.2f}); median of per-round ratios "
      f"{c['ratio_median_of_rounds']:.2f} |",
      f"| completion tokens / s (median step) | {c['trl']['tokens_per_s']:.0f} "
      f"| {c['gkd_jax']['tokens_per_s']:.0f} | |",
      f"| sampling {c['new_tokens']} tokens, alone | {fmt(t('trl', 'sample'))} "
      f"| {fmt(t('gkd_jax', 'sample'))} | {r['sample']:.2f} ({rm['sample']:.2f}) |",
      f"| loss + backward + update, fixed completions | {fmt(t('trl', 'update'))} "
      f"| {fmt(t('gkd_jax', 'update'))} | {r['update']:.2f} ({rm['update']:.2f}) |",
      f"| TRL: generate inside the step / rest of the step | {tr_gen:.3f} / "
      f"{_med(c, 'trl', 'step') - tr_gen:.3f} | | |",
      f"| gkd_jax sampling in bfloat16, alone | | {fmt(t('gkd_jax', 'sample_bf16'))} "
      f"| {_med(c, 'trl', 'sample') / t('gkd_jax', 'sample_bf16')['median']:.2f} |",
  ]
  return rows


def _first_calls(c) -> list[str]:
  rows = ["| first call (compile / warm-up + one run), s | TRL | gkd_jax |", "| --- | --- | --- |"]
  fj, ft = c["gkd_jax"]["first_call_s"], c["trl"]["first_call_s"]
  rows.append(
      f"| set-up (load checkpoints, build) | {c['trl']['setup_s']:.1f} "
      f"| {c['gkd_jax']['setup_s']:.1f} |"
  )
  for op, label in (
      ("step", "on-policy step"),
      ("sample", "sampling"),
      ("update", "loss + update (fixed completions)"),
      ("sample_bf16", "sampling, bfloat16"),
  ):
    rows.append(f"| {label} | {ft.get(op, float('nan')):.2f} | {fj.get(op, float('nan')):.2f} |")
  return rows


def _floor(c) -> list[str]:
  """How fast each half could be at all: its FLOPs at this CPU's matmul rate, and its weight
  matmuls alone under XLA."""
  fj, ft = c["gkd_jax"]["floor"], c["trl"]["floor"]
  rate = fj["matmul_gflops"]
  upd, smp = _med(c, "gkd_jax", "update"), _med(c, "gkd_jax", "sample")
  gflop_u, gflop_s = fj["update_flops"] / 1e9, fj["sample_flops"] / 1e9
  at_rate_u, at_rate_s = gflop_u / rate, gflop_s / rate
  mm_u, mm_s = _med(c, "gkd_jax", "update_matmuls"), _med(c, "gkd_jax", "sample_matmuls")
  trl = _med(c, "trl", "step")
  return [
      f"One float32 {' x '.join(map(str, fj['matmul']))} matmul (the teacher's MLP) runs at "
      f"{rate:.0f} GFLOP/s under XLA and {ft['matmul_gflops']:.0f} under torch on this CPU "
      "(the fastest of 30 runs, measured in each side's process before the rounds).",
      "",
      "| gkd_jax | loss + backward + update | sampling |",
      "| --- | --- | --- |",
      f"| FLOPs (XLA cost analysis) | {gflop_u:.1f} GFLOP (train_step at λ=0) "
      f"| {gflop_s:.1f} GFLOP (a student forward over prompt + completion) |",
      f"| median time, achieved rate | {upd:.3f} s, {gflop_u / upd:.0f} GFLOP/s "
      f"({100 * gflop_u / upd / rate:.0f}%) | {smp:.3f} s, {gflop_s / smp:.0f} GFLOP/s "
      f"({100 * gflop_s / smp / rate:.0f}%) |",
      f"| the same FLOPs at the matmul rate | {at_rate_u:.3f} s | {at_rate_s:.3f} s |",
      f"| its weight matmuls alone under XLA, at these shapes (`matmul_floor.py`) "
      f"| {mm_u:.3f} s | {mm_s:.3f} s |",
      "",
      f"TRL/gkd_jax step with the loss + update at the matmul rate (sampling as measured): "
      f"{trl / (at_rate_u + smp):.2f}; with both halves at the matmul rate: "
      f"{trl / (at_rate_u + at_rate_s):.2f}, a ceiling (elementwise work counted as if it ran "
      "at the matmul rate too). With everything but the weight matmuls taking no time, at XLA's "
      f"speed for their shapes: {trl / (mm_u + mm_s):.2f}.",
  ]


def _memory(c) -> list[str]:
  """Each process's peak resident set per op after set-up, and gkd_jax's XLA buffer assignment."""
  mj, mt = c["gkd_jax"].get("memory"), c["trl"].get("memory")
  if not mj:  # results from before the memory rows
    return []
  rows = [
      "| MiB | TRL | gkd_jax |",
      "| --- | --- | --- |",
      f"| peak RSS until ready (load + compile + first calls) | {mt['setup_peak']:.0f} "
      f"| {mj['setup_peak']:.0f} |",
  ]
  for op, label in (
      ("step", "an on-policy step"),
      ("sample", "sampling alone"),
      ("update", "the loss + update alone"),
  ):
    if op in mj["ops"] and op in mt["ops"]:
      fmt = lambda m: f"{m[op]['peak']:.0f} (+{max(0.0, m[op]['peak'] - m[op]['before']):.0f})"
      rows.append(
          f"| peak RSS during {label} (+ over the RSS before it) | {fmt(mt['ops'])} "
          f"| {fmt(mj['ops'])} |"
      )
  rows += [
      "",
      "One extra step, sampling and loss + update after set-up, in that order, the peak reset "
      "before each. Allocators keep freed pages (glibc, torch, XLA:CPU), so the RSS before an op "
      "can hold what the op before it used: compare the peaks; an increment of 0 means the op "
      "fitted in memory already held.",
      "",
      "| gkd_jax train_step, XLA memory analysis, MiB | arguments | outputs | aliased "
      "| temporaries | peak |",
      "| --- | --- | --- | --- | --- | --- |",
  ]
  for name, label in (("step", "λ=1 (sampling inside)"), ("update", "λ=0 (loss + update)")):
    x = mj["xla"][name]
    rows.append(
        f"| {label} | {x['arguments']:.0f} | {x['outputs']:.0f} | {x['aliased']:.0f} "
        f"| {x['temporaries']:.0f} | {x['peak']:.0f} |"
    )
  return rows


PAD_NOTE = (
    "Step 2 differs beyond rounding for a known reason: transformers builds Llama's input "
    "embedding with `padding_idx = pad_token_id` (2, `<|im_end|>` for SmolLM2, a token of every "
    "chat prompt), so torch gives that row no gradient from its input occurrences, while gkd_jax "
    "trains it. Comparing one update tensor by tensor, that row is the only difference beyond "
    "rounding; with `embed_tokens.padding_idx = None` TRL's step-2 loss matched gkd_jax's to "
    "6e-8 (gkd_step_smollm2.py). Timing is unaffected."
)


def _loss_check(c) -> list[str]:
  lc = c["loss_check"]
  rows = [
      "| fixed completion, same weights | TRL loss | gkd_jax loss | abs diff | rel diff |",
      "| --- | --- | --- | --- | --- |",
  ]
  for i, label in enumerate(("step 1 (initial weights)", "step 2 (after one AdamW update)")):
    rows.append(
        f"| {label} | {lc['trl'][i]:.8f} | {lc['gkd_jax'][i]:.8f} | "
        f"{lc['abs_diff'][i]:.2e} | {lc['rel_diff'][i]:.2e} |"
    )
  return rows


def _scaling_table(cells, skipped) -> list[str]:
  rows = [
      "| batch | new tokens | TRL s/step | gkd_jax s/step | TRL tok/s | gkd_jax tok/s "
      "| ratio step (minima) | ratio sampling | ratio rest of step |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for c in sorted(cells, key=lambda c: (c["new_tokens"], c["batch"])):
    r = c["ratio_trl_over_gkd_jax"]
    rows.append(
        f"| {c['batch']} | {c['new_tokens']} | {_med(c, 'trl', 'step'):.3f} "
        f"| {_med(c, 'gkd_jax', 'step'):.3f} | {c['trl']['tokens_per_s']:.0f} "
        f"| {c['gkd_jax']['tokens_per_s']:.0f} | {r['step']:.2f} "
        f"({c['ratio_of_minima']['step']:.2f}) | {r['sample']:.2f} "
        f"| {r.get('update', r.get('step_minus_sample', float('nan'))):.2f} |"
    )
  for s in skipped:
    rows.append(f"| {s['batch']} | {s['new_tokens']} | skipped: {s['reason']} | | | | | | |")
  return rows


def markdown(result, plot_name: str = "") -> str:
  cells = result["cells"]
  c = cells[0]
  vj, vt = c["gkd_jax"]["versions"], c["trl"]["versions"]
  setup = result.get(  # results from before the setup line: the random Gemma-2 pair
      "setup", f"Student Gemma-2 256×4, teacher 512×6, V=4096, prompts of {c['prompt_len']} tokens"
  )
  lines = [
      "# GKD training step: gkd_jax vs TRL's GKDTrainer"
      + (" (SmolLM2-135M, the real models)" if result.get("real") else ""),
      "",
      f"Made by `{result['command']}` at {result['date']}, code at `{result['commit']}`, "
      f"{result['cpus']} CPUs, nice {result['nice']}. {setup}, forced completion lengths, λ=1, "
      f"JSD β={result.get('beta', 0.5)}, AdamW, gkd_jax models in {result['dtype']}, TRL float32 "
      f"with {vt['threads']} torch threads "
      "(see the script's docstring for the exact setup). Times are wall seconds; each side ran in "
      "its own process, the two driven alternately. Ratios are TRL time / gkd_jax time of medians "
      "(and of minima, the runs least disturbed by other jobs on the machine).",
      "",
      f"gkd_jax: jax {vj['jax']}, flax {vj['flax']}, optax {vj['optax']}, {vj['devices']}, "
      f"remat={vj['remat']}, kernel_impl={vj['kernel_impl']}. TRL: trl {vt['trl']}, transformers "
      f"{vt['transformers']}, torch {vt['torch']}, attention {vt['attn_implementation']}.",
      "",
  ]
  if not result["scaling"]:
    lines += [f"## Batch {c['batch']}, {c['new_tokens']} new tokens, {c['steps']} rounds", ""]
    lines += _main_table(c) + [""]
    lines += [
        f"TRL/gkd_jax per round: {', '.join(f'{x:.2f}' for x in c['ratio_per_round'])}. "
        f"Peak RSS MiB: {json.dumps({k: round(v) for k, v in c['peak_rss_mib'].items()})}.",
        "",
    ]
    if c["gkd_jax"].get("memory"):
      lines += ["## Memory", ""] + _memory(c) + [""]
    if "floor" in c["gkd_jax"]:
      lines += ["## Arithmetic floor", ""] + _floor(c) + [""]
    lines += ["## Compile / warm-up", ""] + _first_calls(c) + [""]
    if "loss_check" in c:  # off with --loss-check 0
      lines += ["## Same loss on the same completion", ""] + _loss_check(c) + [""]
      if result.get("real"):
        lines += [PAD_NOTE, ""]
  else:
    lines += [f"## Scaling ({c['steps']} rounds per cell)", ""]
    lines += _scaling_table(cells, result["skipped"]) + [""]
    lines += [
        "Each cell: 'step' and 'sample' ops only (rest of step = step − sample), no loss "
        "check (the single-cell run has it).",
        "",
    ]
    if plot_name:
      lines += [f"![scaling]({plot_name})", ""]
  return "\n".join(lines)


def plot(result, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for n, style, marker in ((64, "-", "o"), (256, "--", "s")):
    cells = sorted((c for c in result["cells"] if c["new_tokens"] == n), key=lambda c: c["batch"])
    if not cells:
      continue
    bs = [c["batch"] for c in cells]
    for side, color in (("gkd_jax", "C0"), ("trl", "C1")):
      axes[0].plot(
          bs,
          [c[side]["tokens_per_s"] for c in cells],
          style,
          color=color,
          marker="o",
          label=f"{side}, {n} new tokens",
      )
      axes[0].lines[-1].set_marker(marker)
    axes[1].plot(
        bs,
        [c["ratio_trl_over_gkd_jax"]["step"] for c in cells],
        style,
        marker=marker,
        color="C2",
        label=f"{n} new tokens",
    )
  axes[0].set(
      xscale="log",
      ylim=(0, None),
      xlabel="batch",
      ylabel="completion tokens / s",
      title="GKD step throughput",
  )
  axes[1].set(
      xscale="log", xlabel="batch", ylabel="TRL s/step ÷ gkd_jax s/step", title="speed ratio"
  )
  batches = sorted({c["batch"] for c in result["cells"]})
  for ax in axes:
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(result, out: Path) -> None:
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(result, indent=1))
  plot_name = ""
  if result["scaling"] and len(result["cells"]) > 1:
    plot_name = f"{out.name}.png"
    plot(result, out.parent / plot_name)
  out.with_suffix(".md").write_text(markdown(result, plot_name))
