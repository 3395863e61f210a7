"""Bundled tasks: data generators and evaluators for the embedded default run.

`get_task(name)` returns the task module ("arithmetic", "slip_addition"), `asset_dir(name)` its
bundled files (train.jsonl, eval.jsonl, tokenizer.model, and the trained checkpoints the configs use).
"""

import importlib
import os

TASKS = ("arithmetic", "slip_addition", "instructions")


def get_task(name: str):
  """The module of a bundled task; it provides `is_correct(prompt, completion)` and `accuracy`."""
  if name not in TASKS:
    raise ValueError(f"task.name={name!r} is not a bundled task; choose one of {TASKS} or ''")
  return importlib.import_module(f"gkd_jax.tasks.{name}")


def asset_dir(name: str) -> str:
  """Directory of a task's bundled assets (inside the installed package)."""
  if name not in TASKS:
    raise ValueError(f"task.name={name!r} is not a bundled task; choose one of {TASKS}")
  return os.path.join(os.path.dirname(__file__), "assets", name)
