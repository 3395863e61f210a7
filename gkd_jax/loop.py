"""The training loop: the next batch, the jitted step that serves it, then the hooks.

Everything else a step may do (log, evaluate, warn, check finiteness, checkpoint, stop on
preemption) is a hook (gkd_jax.hooks) run after the step at its interval; gkd_jax.train builds the
run and its hooks and finishes the run after the loop.
"""

from __future__ import annotations

from typing import Any

import jax

from gkd_jax import batches, programs
from gkd_jax.hooks import Hooks, StepInfo


def run_steps(run, steps: programs.Steps, state, data_iter, hooks: Hooks) -> tuple[Any, int, bool]:
  """Runs the steps from `state.step` to train.num_steps, or until a hook sets `info.stop`.

  Returns (state, step, stopped): the state after the last step run, its step count, and whether a
  hook stopped the loop early.
  """
  c = run.config
  rng = jax.random.key(c.seed)  # the steps fold in their step number
  step, stopped = int(state.step), False
  while step < c.train.num_steps and not stopped:
    local = _next_batch(data_iter, step, c)
    step_fn, teacher_params, teacher = programs.step_program(run, steps, step, local)
    state, metrics_ = step_fn(state, teacher_params, batches.global_batch(run, local), rng)
    step += 1
    info = StepInfo(step, c.train.num_steps, state, metrics_, teacher)
    hooks.run(info)
    stopped = info.stop
  return state, step, stopped


def _next_batch(data_iter, step: int, config) -> dict:
  """The next process-local batch; one clear error when a finite dataset ends before the run."""
  try:
    return next(data_iter)
  except StopIteration:
    ran_out = (
        f"data.num_epochs={config.data.num_epochs} ran out at step {step} of "
        f"train.num_steps={config.train.num_steps}; use -1 (repeat) or fewer steps"
    )
    raise ValueError(ran_out) from None
