"""Does the teacher lead back to success from the student's own mistakes? (the premise of on-policy
distillation, measured on a bundled task)

  .venv/bin/python experiments/teacher_recovery.py [--config=configs/paper_table.py] [--n=1000]

For every held-out problem the student gets wrong (greedy), the student's completion is cut just after
its first character that departs from the clean reference completion (its first mistake), and the
teacher continues greedily from there. Prints and writes to OUT (default
experiments/results/teacher_recovery_<task>.json) how often the teacher still reaches the right answer,
and how often it does from the student's prefix just *before* the mistake (a sanity check: ~its own
accuracy).
"""

import json
import os
import runpy

from absl import app, flags
import jax
import numpy as np

from gkd_jax import evaluation, tasks, train
from gkd_jax.sampling import sample

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
_CONFIG = flags.DEFINE_string("config", os.path.join(ROOT, "configs", "paper_table.py"), "Config.")
_N = flags.DEFINE_integer("n", 1000, "Held-out problems.")
_OUT = flags.DEFINE_string("out", "", "Result file (default: experiments/results/...).")


def first_departure(completion: str, reference: str):
  """Index of the first character where `completion` departs from `reference` (None if equal)."""
  for i, (a, b) in enumerate(zip(completion, reference)):
    if a != b:
      return i
  return None if len(completion) == len(reference) else min(len(completion), len(reference))


def continue_greedily(run, model, params, texts, max_new_tokens):
  """Greedy continuations of raw texts (each "prompt + partial completion"), batched."""
  tok, out = run.tokenizer, []
  for start in range(0, len(texts), 100):
    ids = [tok.encode(t, add_bos=True) for t in texts[start : start + 100]]
    width = max(map(len, ids))
    prompt = np.array([[tok.pad_id] * (width - len(i)) + i for i in ids], np.int32)
    mask = np.array([[0] * (width - len(i)) + [1] * len(i) for i in ids], np.int32)
    res = sample(
        model,
        params,
        prompt,
        mask,
        jax.random.key(0),
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        eos_id=run.settings.eos_id,
    )
    for row_tokens, row_mask in zip(np.asarray(res.tokens), np.asarray(res.mask)):
      out.append(
          tok.decode(
              [int(t) for t, m in zip(row_tokens, row_mask) if m and t not in run.settings.eos_id]
          )
      )
  return out


def main(_):
  config = runpy.run_path(_CONFIG.value)["get_config"]()
  config.eval.num_examples = _N.value
  config.eval.batch_size = 100
  run = train.build(config, mode="eval", devices=jax.devices()[:1])
  task = tasks.get_task(config.task.name)
  prompts, completions = evaluation.eval_completions(run, run.student, run.params, 0.0, 0)
  with open(config.data.eval_path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  references = {r["prompt"]: r["completion"] for r in rows}
  cut_after, cut_before, wrong = [], [], 0
  for p, c in zip(prompts, completions):
    if task.is_correct(p, c):
      continue
    wrong += 1
    i = first_departure(c, references[p])
    if i is None or i >= len(c):
      continue  # stopped early: no written mistake to continue from
    cut_after.append((p, p + c[: i + 1]))
    cut_before.append((p, p + c[:i]))
  max_new = config.eval.max_new_tokens
  result = {
      "task": config.task.name,
      "problems": len(prompts),
      "student_wrong": wrong,
      "continued": len(cut_after),
  }
  for name, cuts in (("after_first_mistake", cut_after), ("before_first_mistake", cut_before)):
    texts = [t for _, t in cuts]
    cont = continue_greedily(run, run.teacher, run.teacher_params, texts, max_new)
    ok = [task.is_correct(p, t[len(p) :] + c) for (p, t), c in zip(cuts, cont)]
    result[f"teacher_recovers_{name}"] = float(np.mean(ok)) if ok else None
  out = _OUT.value or os.path.join(
      ROOT, "experiments", "results", f"teacher_recovery_{config.task.name}.json"
  )
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main)
