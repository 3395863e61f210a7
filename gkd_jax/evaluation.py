"""Evaluation on the held-out split: loss terms of the eval step, and the bundled task's metrics on
decoded completions.

  evaluate(run, params, steps)          # {"eval/loss": ..., "eval/accuracy": ...}: what the loop logs
  task_metrics(run, model, params)      # {"accuracy": ...} of any model (student or teacher)
  eval_completions(run, model, params, temperature, seed)   # (prompts, completions) as text

Every process takes part in each call (the arrays span all of them) and gets the same result.
"""

from __future__ import annotations

import functools

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from gkd_jax import batches, gkd, programs, tasks
from gkd_jax.sampling import sample


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_id", "activations"))
def _decode(
    model, params, prompt_BxP, pmask_BxP, rng, temperature, *, max_new_tokens, eos_id, activations
):
  return sample(
      model,
      params,
      prompt_BxP,
      pmask_BxP,
      rng,
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      eos_id=eos_id,
      activations=activations,
  )


def eval_completions(run, model, params, temperature: float, seed: int):
  """(prompts, completions) of eval.num_examples held-out prompts, decoded at `temperature`
  (0 = greedy), every process taking part and every process getting all of them."""
  c = run.config
  loader = batches.loader(
      run, c.data.eval_path, batch_size=c.eval.batch_size, shuffle=False, num_epochs=1
  )
  stops = run.settings.eos_id
  prompts, completions = [], []
  for i, local in enumerate(loader):
    batch = batches.global_batch(run, local)
    out = _decode(
        model,
        params,
        batch["prompt_tokens"],
        batch["prompt_mask"],
        jax.random.fold_in(jax.random.key(seed), i),
        jnp.float32(temperature),
        max_new_tokens=c.eval.max_new_tokens,
        eos_id=stops,
        activations=gkd.activation_sharding(run.settings, batch["prompt_tokens"].shape[0]),
    )
    prompt_BxP, pmask_BxP, tokens_BxN, mask_BxN = (
        np.asarray(multihost_utils.process_allgather(x, tiled=True))
        for x in (batch["prompt_tokens"], batch["prompt_mask"], out.tokens, out.mask)
    )
    for row in range(tokens_BxN.shape[0]):
      ids = [t for t, m in zip(tokens_BxN[row], mask_BxN[row]) if m and t not in stops]
      prompts.append(run.tokenizer.decode(list(prompt_BxP[row][pmask_BxP[row] == 1])))
      completions.append(run.tokenizer.decode(ids))
    if len(prompts) >= c.eval.num_examples:
      break
  n = min(len(prompts), c.eval.num_examples)
  return prompts[:n], completions[:n]


def _task_scores(task, prompts, completions) -> dict:
  if hasattr(task, "evaluate"):
    return task.evaluate(prompts, completions)
  return {"accuracy": task.accuracy(prompts, completions)}


def task_metrics(run, model, params) -> dict:
  """The bundled task's own metrics on held-out prompts ({} without a task).

  Greedy decoding gives `accuracy` (and whatever else the task reports, e.g. per difficulty);
  with eval.num_samples = k > 0, k more decodes per prompt at eval.temperature give the same
  metrics averaged over the k samples under `sampled/`, and `sampled/pass_at_k`.
  """
  c = run.config
  if not c.task.name:
    return {}
  task = tasks.get_task(c.task.name)
  prompts, completions = eval_completions(run, model, params, 0.0, c.seed)
  out = _task_scores(task, prompts, completions)
  k = c.eval.num_samples
  if k:
    per_sample, solved = [], np.zeros(len(prompts), bool)
    for j in range(k):
      p, comp = eval_completions(run, model, params, c.eval.temperature, c.seed + 1 + j)
      per_sample.append(_task_scores(task, p, comp))
      solved |= np.array([task.is_correct(x, y) for x, y in zip(p, comp)])
    for key in per_sample[0]:
      out[f"sampled/{key}"] = float(np.mean([m[key] for m in per_sample]))
    out["sampled/pass_at_k"] = float(solved.mean())
  return out


def teacher_metrics(run) -> dict:
  """summary.json's teacher fields (eval.teacher; {} otherwise): the task metrics of the teacher
  (`teacher_eval`, its `teacher` accuracy) or of each of several (`teachers_eval`, by name), each
  on all held-out prompts."""
  if not run.config.eval.teacher:
    return {}
  out = {}
  if run.teacher is not None:
    out["teacher_eval"] = task_metrics(run, run.teacher, run.teacher_params)
    out["teacher"] = out["teacher_eval"].get("accuracy")
  if run.teachers:
    out["teachers_eval"] = {t.name: task_metrics(run, t.model, t.params) for t in run.teachers}
  return out


def _heldout(run, params, steps: programs.Steps):
  """Held-out loss terms: token means over eval batches (and per teacher, with several)."""
  c = run.config
  loader = batches.loader(
      run, c.data.eval_path, batch_size=c.eval.batch_size, shuffle=False, num_epochs=1
  )
  sums, tokens, count = {}, {}, 0
  for local in loader:  # token means of the batches, weighted by their token counts
    eval_fn, teacher_params, name = programs.eval_program(run, steps, local)
    m = jax.device_get(eval_fn(params, teacher_params, batches.global_batch(run, local)))
    n = float(m.pop("num_tokens"))
    for k, v in m.items():
      for key in (k,) if name is None else (k, f"teacher/{name}/{k}"):
        sums[key] = sums.get(key, 0.0) + n * float(v)
        tokens[key] = tokens.get(key, 0.0) + n
    count += 1
    if count * c.eval.batch_size >= c.eval.num_examples:
      break
  return {f"eval/{k}": v / max(tokens[k], 1.0) for k, v in sums.items()}


def evaluate(run, params, steps: programs.Steps) -> dict:
  """Held-out loss terms and the task metric ({} when the config has no eval data)."""
  if not run.config.data.eval_path:
    return {}
  out = _heldout(run, params, steps)
  out.update({f"eval/{k}": v for k, v in task_metrics(run, run.student, params).items()})
  return out
