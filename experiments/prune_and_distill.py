"""Prune SmolLM2-135M-Instruct to half its layers and recover it by distillation (the main job).

  .venv/bin/python experiments/prune_and_distill.py --budget=demo   # `make demo`: ~15 min, 2 cores
  .venv/bin/python experiments/prune_and_distill.py --budget=core   # the comparison, 2 seeds

Every stage is resumable (files are written whole, training runs resume from their checkpoints):
1. the teacher (the GGUF from `make models`) as an HF folder, W/teacher;
2. the student: the teacher pruned by depth (Minitron block importance on 64 training prompts),
   W/pruned (`gkd-jax prune`);
3. the teacher's sampled answers (T=1, 64 tokens) to the training prompts, kept as its own token
   ids (W/teacher_answers.jsonl), and its greedy answers to the held-out prompts (the ROUGE-L
   reference);
4. core budget only, stage 1: SFT of the pruned student on the teacher's answers (SeqKD), whose
   result is the shared init of stage 2;
5. each method from the shared init for the same number of steps (configs/prune_and_distill.py),
   with each run's training seconds reported (an equal-wall-time continuation is not built yet);
6. evaluation of every row (gkd_jax/lm_eval.py) on the held-out prompts of the bundled
   instruction set, a table (results.md), answers side by side, plots.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from configs import prune_and_distill as base_config  # noqa: E402
from gkd_jax import chat_template, lm_eval, released, tasks, tokenizers, train  # noqa: E402
from gkd_jax.convert import gguf_to_hf  # noqa: E402
from gkd_jax.models import hf  # noqa: E402
from gkd_jax.prune_checkpoint import prune_checkpoint  # noqa: E402

BUDGETS = {
    "demo": dict(
        layers=15,
        train_prompts=320,
        eval_prompts=48,
        stage1_steps=0,
        steps=30,
        seeds=(0,),
        methods=("supervised_kd", "on_policy"),
    ),
    "core": dict(
        layers=15,
        train_prompts=1024,
        eval_prompts=96,
        stage1_steps=60,
        steps=60,
        seeds=(0, 1),
        methods=("sft_continued", "supervised_kd", "gkd_0.5", "on_policy", "on_policy_rkl"),
    ),
}
# Each method is a setting of configs/prune_and_distill.py (JSD(0.9) unless it says otherwise).
METHODS = {
    "sft_continued": {"gkd.lmbda": 0.0, "gkd.divergence_weight": 0.0, "gkd.ce_weight": 1.0},
    "supervised_kd": {"gkd.lmbda": 0.0},
    "gkd_0.5": {"gkd.lmbda": 0.5},
    "on_policy": {"gkd.lmbda": 1.0},
    "on_policy_rkl": {"gkd.lmbda": 1.0, "gkd.loss": "reverse_kl"},
}
MAX_NEW = 48  # answer tokens: configs/prune_and_distill.py's sampling.max_new_tokens
SHOWN = 2  # held-out answers printed side by side


def _write_json(path: Path, obj) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1) + "\n")
  os.replace(tmp, path)


def _prompt_records(split: str, n: int) -> list[dict]:
  path = os.path.join(tasks.asset_dir("instructions"), f"{split}.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()][:n]


def _prompts(tok, records) -> lm_eval.Prompts:
  ids = [chat_template.encode_chat(tok, r["messages"]) for r in records]
  return lm_eval.pad_prompts(ids, tok.pad_id)


def prepare(w: Path, budget: dict) -> dict:
  """Stages 1-3; returns the paths."""
  teacher, pruned = w / "teacher", w / "pruned"
  if not (teacher / "config.json").is_file():
    print("teacher: SmolLM2-135M-Instruct GGUF -> HF folder", flush=True)
    gguf_to_hf(released.path(released.SMOLLM2_135M), teacher)
  if not (pruned / "pruning.json").is_file():
    print(f"student: the teacher pruned to {budget['layers']} layers", flush=True)
    calibration = os.path.join(tasks.asset_dir("instructions"), "train.jsonl")
    prune_checkpoint(teacher, pruned, budget["layers"], "importance", calibration, 64)
  answers = w / "teacher_answers.jsonl"
  refs = w / "teacher_eval_greedy.json"
  if not answers.is_file() or not refs.is_file():
    tok = tokenizers.load_tokenizer(str(teacher))
    model, params = hf.load_pretrained(teacher)
    stops = train.stop_ids(tok)
    if not answers.is_file():
      records = _prompt_records("train", budget["train_prompts"])
      out = _generate(model, params, tok, records, stops, temperature=1.0, desc="teacher answers")
      with open(answers.with_suffix(".tmp"), "w") as f:
        for r, i in zip(records, range(len(records))):
          row = {"messages": r["messages"], "completion_ids": out.ids(i)}
          f.write(json.dumps(row) + "\n")
      os.replace(answers.with_suffix(".tmp"), answers)
    if not refs.is_file():
      records = _prompt_records("eval", budget["eval_prompts"])
      out = _generate(model, params, tok, records, stops, temperature=0.0, desc="teacher greedy")
      _write_json(refs, [tok.decode(out.ids(i, stops)) for i in range(len(records))])
  return {"teacher": teacher, "pruned": pruned, "answers": answers, "refs": refs}


def _generate(model, params, tok, records, stops, temperature, desc, seed=0):
  prompts = _prompts(tok, records)
  parts = []
  for start in tqdm(range(0, len(records), 32), desc=desc):
    sub = lm_eval.Prompts(prompts.tokens[start : start + 32], prompts.mask[start : start + 32])
    parts.append(
        lm_eval.generate(
            model,
            params,
            sub,
            stops,
            max_new_tokens=MAX_NEW,
            temperature=temperature,
            seed=seed + start,
            batch_size=32,
        )
    )
  return lm_eval.Answers(
      np.concatenate([p.tokens for p in parts]), np.concatenate([p.mask for p in parts])
  )


def _config(init: Path, paths: dict, overrides: dict, steps: int, seed: int):
  c = base_config.get_config()
  c.student.path = str(init)
  c.teacher.path = str(paths["teacher"])
  c.data.train_path = str(paths["answers"])
  c.seed = seed
  c.train.num_steps = steps
  for key, value in overrides.items():
    group, field = key.split(".")
    c[group][field] = value
  return c


def run_method(run_dir: Path, init: Path, paths: dict, method: str, steps: int, seed: int) -> dict:
  """Trains (or resumes, or reads the finished) run; returns its summary."""
  config = _config(init, paths, METHODS[method], steps, seed)
  print(f"train {run_dir.name}: {method}, {steps} steps, seed {seed}", flush=True)
  return train.train(config, str(run_dir))


def _train_seconds(run_dir: Path) -> float:
  """Wall time of the run's training steps, from the logged mean step times (the first interval
  includes compilation)."""
  total, last = 0.0, 0
  with open(run_dir / "metrics.jsonl") as f:
    for line in f:
      m = json.loads(line)
      if "step_time_s" in m:
        total += m["step_time_s"] * (m["step"] - last)
        last = m["step"]
  return total


def evaluate(row: str, checkpoint: Path, paths: dict, w: Path, seed: int) -> dict:
  """lm_eval metrics of one model on the held-out prompts (cached in W/eval/ROW.json)."""
  out = w / "eval" / f"{row}.json"
  if out.is_file():
    return json.loads(out.read_text())
  out.parent.mkdir(exist_ok=True)
  t0 = time.time()
  tok = tokenizers.load_tokenizer(str(paths["teacher"]))
  stops = train.stop_ids(tok)
  records = _prompt_records("eval", len(json.loads(paths["refs"].read_text())))
  prompts = _prompts(tok, records)
  student, s_params = hf.load_pretrained(checkpoint)
  teacher, t_params = hf.load_pretrained(paths["teacher"])
  kw = dict(max_new_tokens=MAX_NEW, seed=seed, batch_size=16)
  greedy = lm_eval.generate(student, s_params, prompts, stops, temperature=0.0, **kw)
  sampled = lm_eval.generate(student, s_params, prompts, stops, temperature=1.0, **kw)
  texts = [tok.decode(greedy.ids(i, stops)) for i in range(len(records))]
  refs = json.loads(paths["refs"].read_text())
  m = lm_eval.teacher_scored(
      student, s_params, teacher, t_params, prompts, sampled, exclude=lm_eval.loops(sampled, stops)
  )
  m.update(lm_eval.text_metrics(greedy, stops, texts, refs))
  m["sampled_loop_rate"] = float(lm_eval.loops(sampled, stops).mean())
  task = tasks.get_task("instructions")
  user = [r["messages"][-1]["content"] for r in records]
  m.update(task.evaluate(user, texts))
  m["answers"] = texts
  m["eval_seconds"] = time.time() - t0
  _write_json(out, m)
  return m


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


def table(rows: dict) -> str:
  """Markdown table: one row per model, mean ± std over seeds where there are several."""
  head = "| model | " + " | ".join(name for _, name in COLUMNS) + " |"
  lines = [head, "|" + " --- |" * (len(COLUMNS) + 1)]
  for name, ms in rows.items():
    cells = []
    for key, _ in COLUMNS:
      v = np.array([m[key] for m in ms if key in m], float)
      cells.append(
          "n/a" if not len(v) else f"{v.mean():.3f}" + (f" ± {v.std():.3f}" if len(v) > 1 else "")
      )
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def side_by_side(rows: dict, refs: list, n: int) -> str:
  records = _prompt_records("eval", len(refs))
  out = []
  for i in range(n):
    out.append(f"\n### {records[i]['messages'][-1]['content']}\n")
    out.append(f"- **teacher**: {refs[i]!r}")
    for name, ms in rows.items():
      if name != "teacher":  # its greedy answer is the reference above
        out.append(f"- **{name}**: {ms[0]['answers'][i]!r}")
  return "\n".join(out)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--budget", choices=sorted(BUDGETS), default="demo")
  parser.add_argument("--workdir", default="")
  parser.add_argument("--seeds", default="", help="comma-separated seeds (default: the budget's)")
  args = parser.parse_args()
  budget = dict(BUDGETS[args.budget])
  if args.seeds:
    budget["seeds"] = tuple(int(s) for s in args.seeds.split(","))
  w = Path(
      args.workdir or ("workdirs/demo" if args.budget == "demo" else "workdirs/prune_and_distill")
  )
  w.mkdir(parents=True, exist_ok=True)
  t_start = time.time()
  paths = prepare(w, budget)
  rows = {"teacher": [], "pruned init": []}
  rows["pruned init"].append(evaluate("pruned_init", paths["pruned"], paths, w, 0))
  timing = {}
  for seed in budget["seeds"]:
    init = paths["pruned"]
    if budget["stage1_steps"]:
      stage1 = w / "runs" / f"stage1_sft_s{seed}"
      run_method(stage1, init, paths, "sft_continued", budget["stage1_steps"], seed)
      init = stage1 / "student"
      rows.setdefault("stage 1 (SFT on teacher answers)", []).append(
          evaluate(f"stage1_s{seed}", init, paths, w, seed)
      )
    for method in budget["methods"]:
      run_dir = w / "runs" / f"{method}_s{seed}"
      run_method(run_dir, init, paths, method, budget["steps"], seed)
      timing[f"{method}_s{seed}"] = _train_seconds(run_dir)
      rows.setdefault(method, []).append(
          evaluate(f"{method}_s{seed}", run_dir / "student", paths, w, seed)
      )
  rows["teacher"].append(evaluate("teacher", paths["teacher"], paths, w, 0))
  rows = {"teacher": rows.pop("teacher"), **rows}
  refs = json.loads(paths["refs"].read_text())
  report = [
      f"# Prune and distill: budget {args.budget}\n",
      table(rows),
      "\nTraining seconds per run: " + json.dumps({k: round(v) for k, v in timing.items()}),
      side_by_side(rows, refs, SHOWN),
  ]
  (w / "results.md").write_text("\n".join(report) + "\n")
  print("\n".join(report))
  print(f"\n{w}/results.md; total wall time {time.time() - t_start:.0f} s")


if __name__ == "__main__":
  main()
