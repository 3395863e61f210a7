"""Prune SmolLM2-135M-Instruct to half its layers and recover it by distillation (the main job).

  .venv/bin/python experiments/prune_and_distill.py --budget=demo   # `make demo`: ~15 min, 2 cores
  .venv/bin/python experiments/prune_and_distill.py --budget=core   # the comparison, 2 seeds

Every stage is resumable (files are written whole, training runs resume from their checkpoints):
1. the teacher (the GGUF from `make models`) as an HF folder, W/teacher;
2. the student: the teacher pruned by depth (Minitron block importance on 64 training prompts),
   W/pruned (`gkd-jax prune`);
3. the teacher's sampled answers (T=1, 48 tokens) to the training prompts, kept as its own token
   ids (W/teacher_answers.jsonl), and its greedy answers to the held-out prompts (the ROUGE-L
   reference);
4. core only, stage 1: SFT of the pruned student on the teacher's answers (SeqKD, the Gemma 2
   recipe's first stage), whose result is the shared init of stage 2;
5. core only, the learning rate of each stage-2 method: one fixed grid, short runs from the stage-1
   init (seed 0), chosen by the reverse KL to the teacher of the student's own samples on
   validation prompts (training-split prompts that are not trained on);
6. each method from the shared init for the same number of steps (configs/prune_and_distill.py),
   and (core) at equal training time: every method gets the wall time that supervised KD's steps
   took, i.e. as many steps as its own measured step time allows (the learning rate is constant
   after warmup, so a run stopped at step N is the same run however long it was meant to go);
7. evaluation of every row (gkd_jax/lm_eval.py) on the held-out prompts of the bundled
   instruction set: W/results.{md,json,png} (tables, answers side by side, curves).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from configs import prune_and_distill as base_config  # noqa: E402
from experiments import prune_and_distill_report as report  # noqa: E402
from gkd_jax import data, lm_eval, released, tasks, tokenizers, train  # noqa: E402
from gkd_jax.convert import gguf_to_hf  # noqa: E402
from gkd_jax.models import hf  # noqa: E402
from gkd_jax.prune_checkpoint import prune_checkpoint  # noqa: E402
from gkd_jax.tasks import instructions  # noqa: E402

# What the small budgets share: no validation split, stage 1, grid or equal-time runs; one seed.
_SMALL = dict(
    val_prompts=0,
    eval_checkable=0,
    stage1_steps=0,
    lr_grid=(),
    seeds=(0,),
    methods=("supervised_kd", "on_policy"),
    equal_time="",
)
BUDGETS = {
    "demo": dict(
        _SMALL,
        layers=15,
        train_prompts=320,
        eval_prompts=48,
        steps=30,
        model="smollm2",
        chat=True,
        max_new=48,
    ),
    # Gemma 3 270M (a base model: plain-text prompts to continue), 9 of 18 layers kept, all
    # three global-attention layers among them; a smaller budget (its 262144-entry vocabulary).
    "gemma": dict(
        _SMALL,
        layers=9,
        train_prompts=256,
        eval_prompts=32,
        steps=16,
        model="gemma3",
        chat=False,
        max_new=32,
        config={
            "train.batch_size": 4,
            "data.max_prompt_len": 32,
            "data.max_completion_len": 32,
            "sampling.max_new_tokens": 32,
            # Its float32 train state is 3.2 GB: no second host copy for background writes.
            "train.async_checkpoints": False,
        },
    ),
    "core": dict(
        layers=15,
        train_prompts=512,
        val_prompts=32,
        eval_prompts=48,
        eval_checkable=24,
        stage1_steps=40,
        stage1_lr=3e-4,
        lr_grid=(1e-4, 3e-4, 1e-3),
        grid_steps=8,
        steps=24,
        seeds=(0, 1),
        methods=("supervised_kd", "sft_continued", "gkd_0.5", "on_policy", "on_policy_rkl"),
        equal_time="supervised_kd",
        model="smollm2",
        chat=True,
        max_new=48,
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
MODELS = {"smollm2": released.SMOLLM2_135M, "gemma3": released.GEMMA3_270M}
SHOWN = 2  # held-out answers printed side by side


def _write_jsonl(path: Path, records: list) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
  os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1) + "\n")
  os.replace(tmp, path)


def _prompt_records(split: str, n: int, start: int = 0, chat: bool = True) -> list[dict]:
  """Records of the bundled instruction prompts: chat records, or (`chat=False`, for a base model
  without a chat template) the instruction as plain text to continue, {"prompt": TEXT + newline}."""
  path = os.path.join(tasks.asset_dir("instructions"), f"{split}.jsonl")
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()][start : start + n]
  if chat:
    return [{"messages": r["messages"]} for r in records]
  return [{"prompt": r["messages"][-1]["content"] + "\n"} for r in records]


def eval_records(budget: dict) -> list[dict]:
  """The held-out prompts: the first `eval_prompts` of the eval split, then the first
  `eval_checkable` checkable ones not among them (the open-ended kinds dominate the split)."""
  records = _prompt_records("eval", 10**9, chat=budget["chat"])
  chosen = records[: budget["eval_prompts"]]
  table = instructions.load_checkable()
  rest = [r for r in records[len(chosen) :] if instructions.find_question(_user(r), table)]
  return chosen + rest[: budget["eval_checkable"]]


def _user(record: dict) -> str:
  return record["messages"][-1]["content"] if "messages" in record else record["prompt"].strip()


def _prompts(tok, records) -> lm_eval.Prompts:
  ids = [data.record_ids(tok, {"completion": None, **r}, None)[0] for r in records]  # as trained
  return lm_eval.pad_prompts(ids, tok.pad_id)


def prepare(w: Path, budget: dict) -> dict:
  """Stages 1-3; returns the paths."""
  teacher, pruned = w / "teacher", w / "pruned"
  if not (teacher / "config.json").is_file():
    print(f"teacher: {MODELS[budget['model']]} -> HF folder", flush=True)
    gguf_to_hf(released.path(MODELS[budget["model"]]), teacher)
  if not (pruned / "pruning.json").is_file():
    print(f"student: the teacher pruned to {budget['layers']} layers", flush=True)
    calibration = os.path.join(tasks.asset_dir("instructions"), "train.jsonl")
    if not budget["chat"]:
      calibration = str(w / "calibration.jsonl")
      _write_jsonl(Path(calibration), _prompt_records("train", 64, chat=False))
    prune_checkpoint(teacher, pruned, budget["layers"], "importance", calibration, 64)
  answers = w / "teacher_answers.jsonl"
  refs = w / "teacher_eval_greedy.json"
  if not answers.is_file() or not refs.is_file():
    tok = tokenizers.load_tokenizer(str(teacher))
    model, params = hf.load_pretrained(teacher)
    stops = train.stop_ids(tok)
    if not answers.is_file():
      records = _prompt_records("train", budget["train_prompts"], chat=budget["chat"])
      out = _generate(model, params, tok, records, stops, budget, 1.0, "teacher answers")
      _write_jsonl(answers, [{**r, "completion_ids": out.ids(i)} for i, r in enumerate(records)])
    if not refs.is_file():
      records = eval_records(budget)
      out = _generate(model, params, tok, records, stops, budget, 0.0, "teacher greedy")
      _write_json(refs, [tok.decode(out.ids(i, stops)) for i in range(len(records))])
    del model, params
    _release()
  return {
      "teacher": teacher,
      "pruned": pruned,
      "answers": answers,
      "refs": refs,
      "config": budget.get("config", {}),
  }


def _generate(model, params, tok, records, stops, budget, temperature, desc, seed=0):
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
            max_new_tokens=budget["max_new"],
            temperature=temperature,
            seed=seed + start,
            batch_size=32,
        )
    )
  return lm_eval.Answers(
      np.concatenate([p.tokens for p in parts]), np.concatenate([p.mask for p in parts])
  )


def _config(init: Path, paths: dict, overrides: dict, steps: int, seed: int, lr: float = 0.0):
  """configs/prune_and_distill.py with the run's paths, seed, steps, learning rate and settings."""
  c = base_config.get_config()
  c.student.path = str(init)
  c.teacher.path = str(paths["teacher"])
  c.data.train_path = str(paths["answers"])
  c.seed = seed
  c.train.num_steps = steps
  c.train.log_every = 2  # curves, and step times for the equal-time budget
  c.train.checkpoint_every = 4
  c.train.keep_checkpoints = 1  # a run's checkpoint is ~1 GB (weights and AdamW state, float32)
  if lr:
    c.optim.learning_rate = lr
  for key, value in {**paths.get("config", {}), **overrides}.items():
    group, field = key.split(".")
    c[group][field] = value
  return c


def run_method(run_dir: Path, init: Path, paths: dict, method: str, steps: int, seed: int, lr=0.0):
  """Trains (or resumes, or reads the finished) run to `steps`; returns its summary."""
  config = _config(init, paths, METHODS[method], steps, seed, lr)
  lr_text = f", lr {config.optim.learning_rate:g}"
  print(f"train {run_dir.name}: {method}, {steps} steps, seed {seed}{lr_text}", flush=True)
  summary = train.train(config, str(run_dir))
  # The exported student holds the weights; its tokenizer makes it a folder every tool opens
  # (the next stage's init, `gkd-jax sample`).
  tokenizers.save_tokenizer(_load_teacher(paths)[0], str(run_dir / "student"))
  _release()
  return summary


def _release() -> None:
  """Drops the compiled programs (and the models they hold) of a finished run or evaluation: one
  process trains and evaluates dozens of models, and without this its memory grows by ~1 GB each."""
  jax.clear_caches()
  gc.collect()


def _load_teacher(paths: dict):
  return _teacher(str(paths["teacher"]))


@functools.lru_cache(maxsize=1)
def _teacher(path: str):
  """(tokenizer, stop ids, model, params) of the teacher, read once for every evaluation."""
  tok = tokenizers.load_tokenizer(path)
  return tok, train.stop_ids(tok), *hf.load_pretrained(path)


def validate(name: str, checkpoint: Path, paths: dict, w: Path, budget: dict) -> dict:
  """Teacher-scored metrics of the student's own T=1 samples on the validation prompts (cached in
  W/eval/val_NAME.json): what the learning rate is chosen by."""
  out = w / "eval" / f"val_{name}.json"
  if out.is_file():
    return json.loads(out.read_text())
  out.parent.mkdir(exist_ok=True)
  tok, stops, teacher, t_params = _load_teacher(paths)
  records = _prompt_records(
      "train", budget["val_prompts"], start=budget["train_prompts"], chat=budget["chat"]
  )
  prompts = _prompts(tok, records)
  student, s_params = hf.load_pretrained(checkpoint)
  sampled = lm_eval.generate(
      student, s_params, prompts, stops, max_new_tokens=budget["max_new"], temperature=1.0, seed=0
  )
  m = lm_eval.teacher_scored(student, s_params, teacher, t_params, prompts, sampled)
  _write_json(out, m)
  _release()
  return m


def evaluate(row: str, checkpoint: Path, paths: dict, w: Path, budget: dict, seed: int) -> dict:
  """lm_eval metrics of one model on the held-out prompts (cached in W/eval/ROW.json)."""
  out = w / "eval" / f"{row}.json"
  if out.is_file():
    return json.loads(out.read_text())
  out.parent.mkdir(exist_ok=True)
  t0 = time.time()
  tok, stops, teacher, t_params = _load_teacher(paths)
  records = eval_records(budget)
  prompts = _prompts(tok, records)
  student, s_params = hf.load_pretrained(checkpoint)
  kw = dict(max_new_tokens=budget["max_new"], seed=seed, batch_size=16)
  greedy = lm_eval.generate(student, s_params, prompts, stops, temperature=0.0, **kw)
  sampled = lm_eval.generate(student, s_params, prompts, stops, temperature=1.0, **kw)
  texts = [tok.decode(greedy.ids(i, stops)) for i in range(len(records))]
  refs = json.loads(paths["refs"].read_text())
  m = lm_eval.teacher_scored(
      student, s_params, teacher, t_params, prompts, sampled, exclude=lm_eval.loops(sampled, stops)
  )
  m.update(lm_eval.text_metrics(greedy, stops, texts, refs))
  m["sampled_loop_rate"] = float(lm_eval.loops(sampled, stops).mean())
  if budget["chat"]:  # the checkable slice is of chat answers
    m.update(tasks.get_task("instructions").evaluate([_user(r) for r in records], texts))
  m["answers"] = texts
  m["eval_seconds"] = time.time() - t0
  _write_json(out, m)
  _release()
  return m


def choose_lrs(w: Path, paths: dict, budget: dict, init: Path) -> dict:
  """{method: {"lr", "scores" (validation reverse KL per grid value), "run" (the chosen run)}}."""
  chosen = {}
  for method in budget["methods"]:
    scores = {}
    for lr in budget["lr_grid"]:
      run_dir = w / "runs" / "grid" / f"{method}_lr{lr:g}"
      if not (w / "eval" / f"val_{run_dir.name}.json").is_file():  # else validated already
        run_method(run_dir, init, paths, method, budget["grid_steps"], 0, lr)
      scores[f"{lr:g}"] = validate(run_dir.name, run_dir / "student", paths, w, budget)[
          "reverse_kl"
      ]
    best = min(budget["lr_grid"], key=lambda lr: scores[f"{lr:g}"])
    run = w / "runs" / "grid" / f"{method}_lr{best:g}"
    chosen[method] = {"lr": best, "scores": scores, "run": str(run)}
    print(f"{method}: validation reverse KL {scores} -> lr {best:g}", flush=True)
  return chosen


def equal_time_steps(budget: dict, lrs: dict) -> tuple[float, dict]:
  """(seconds, {method: steps}): the wall time of the reference method's `steps` and the steps
  each method takes in it, from the step times measured in the chosen grid runs."""
  per_step = {m: report.step_seconds(Path(lrs[m]["run"])) for m in budget["methods"]}
  seconds = budget["steps"] * per_step[budget["equal_time"]]
  # At least past warmup (a resume may change num_steps only then) and past the grid's steps.
  floor = max(budget["grid_steps"], base_config.get_config().optim.warmup_steps + 1)
  return seconds, {m: max(floor, round(seconds / t)) for m, t in per_step.items()}


def recover(w, paths, budget, seed, init, lrs, eq_steps) -> tuple[dict, dict]:
  """Every stage-2 method from `init`: ({method: metrics at equal steps}, {... at equal time})."""
  at_steps, at_time = {}, {}
  for method in budget["methods"]:
    run_dir = w / "runs" / f"{method}_s{seed}"
    lr = lrs[method]["lr"] if lrs else 0.0
    if lrs and seed == 0 and not run_dir.exists():  # the chosen grid run is its first steps
      tmp = run_dir.with_name(run_dir.name + ".tmp")
      shutil.rmtree(tmp, ignore_errors=True)
      shutil.copytree(lrs[method]["run"], tmp)
      os.replace(tmp, run_dir)
    n_eq = eq_steps.get(method, budget["steps"])
    for n in sorted({budget["steps"], n_eq}):
      row = f"{method}_s{seed}" + ("" if n == budget["steps"] else f"_t{n}")
      if not (w / "eval" / f"{row}.json").is_file():  # else evaluated (the run may be further on)
        run_method(run_dir, init, paths, method, n, seed, lr)
      m = evaluate(row, run_dir / "student", paths, w, budget, seed)
      m["train_seconds"] = report.train_seconds(run_dir, upto=n)
      m["steps"] = n
      if n == budget["steps"]:
        at_steps[method] = m
      if n == n_eq:
        at_time[method] = m
  return at_steps, at_time


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
      args.workdir
      or {"demo": "workdirs/demo", "core": "workdirs/prune_and_distill"}.get(args.budget)
      or f"workdirs/prune_and_distill_{args.budget}"
  )
  w.mkdir(parents=True, exist_ok=True)
  t_start = time.time()
  paths = prepare(w, budget)
  rows = {"teacher": [], "pruned init": []}
  rows["pruned init"].append(evaluate("pruned_init", paths["pruned"], paths, w, budget, 0))
  rows_t, lrs, eq_seconds, eq_steps, curves = {}, {}, 0.0, {}, {}
  for seed in budget["seeds"]:
    init = paths["pruned"]
    if budget["stage1_steps"]:
      stage1 = w / "runs" / f"stage1_sft_s{seed}"
      run_method(
          stage1, init, paths, "sft_continued", budget["stage1_steps"], seed, budget["stage1_lr"]
      )
      curves[stage1.name] = report.read_curves(stage1)
      init = stage1 / "student"
      rows.setdefault("stage 1 (SFT)", []).append(
          evaluate(f"stage1_s{seed}", init, paths, w, budget, seed)
      )
    if budget["lr_grid"] and not lrs:
      lrs = choose_lrs(w, paths, budget, init)
    if budget["equal_time"] and not eq_steps:
      eq_seconds, eq_steps = equal_time_steps(budget, lrs)
    at_steps, at_time = recover(w, paths, budget, seed, init, lrs, eq_steps)
    for method in budget["methods"]:
      rows.setdefault(method, []).append(at_steps[method])
      if eq_steps:
        rows_t.setdefault(method, []).append(at_time[method])
      curves[f"{method}_s{seed}"] = report.read_curves(w / "runs" / f"{method}_s{seed}")
  rows["teacher"].append(evaluate("teacher", paths["teacher"], paths, w, budget, 0))
  refs = json.loads(paths["refs"].read_text())
  prompts = [_user(r) for r in eval_records(budget)]
  strip = lambda rs: {
      k: [{a: b for a, b in m.items() if a != "answers"} for m in v] for k, v in rs.items()
  }
  results = {
      "budget": args.budget,
      "settings": {k: v for k, v in budget.items()},
      "rows": strip(rows),
      "rows_equal_time": strip(rows_t),
      "answers": {k: v[0]["answers"] for k, v in rows.items()},
      "answers_equal_time": {k: v[0]["answers"] for k, v in rows_t.items()},
      "prompts": prompts,
      "refs": refs,
      "lr": lrs,
      "equal_time": {"reference": budget["equal_time"], "seconds": eq_seconds, "steps": eq_steps},
      "curves": curves,
      "wall_seconds": time.time() - t_start,
  }
  text = [
      f"# Prune and distill: budget {args.budget}\n",
      f"## Equal steps ({budget['steps']})\n",
      report.table(rows),
  ]
  if rows_t:
    text += [
        f"\n## Equal training time ({eq_seconds:.0f} s: {budget['equal_time']}'s "
        f"{budget['steps']} steps; steps {json.dumps(eq_steps)})\n",
        report.table({**{k: rows[k] for k in ("teacher", "pruned init")}, **rows_t}),
    ]
  if lrs:
    text.append(
        "\nLearning rates (validation reverse KL per grid value): "
        + json.dumps({m: (c["lr"], c["scores"]) for m, c in lrs.items()})
    )
  seconds = {
      f"{k}_s{s}": round(m["train_seconds"])
      for k, v in rows.items()
      for s, m in zip(budget["seeds"], v)
      if "train_seconds" in m
  }
  text.append("\nTraining seconds per run (equal steps): " + json.dumps(seconds))
  text.append(report.side_by_side(prompts, refs, results["answers"], SHOWN))
  report.write(w, "results", results, "\n".join(text) + "\n")
  print("\n".join(text))
  print(f"\n{w}/results.md; total wall time {time.time() - t_start:.0f} s")


if __name__ == "__main__":
  main()
