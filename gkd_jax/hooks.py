"""Everything the training loop does besides stepping, as hooks: logging, evaluation, the sampler
mismatch warning, the non-finite guard, checkpoints and preemption after each step at their
interval; the final evaluation, export, summary, plots and table once training completes.

  hooks = Hooks(
      after_step=[LogMetrics(writer, sums, every=10, step=0), Checkpoint(manager, data_iter), ...],
      at_end=[FinalEvaluation(run, steps, writer, summary), Export(run.student, workdir), ...],
  )
  hooks.run(StepInfo(step, num_steps, state, metrics_))   # gkd_jax.loop, after every step
  hooks.end(StepInfo(step, num_steps, state))             # gkd_jax.train, after the last one

An after-step hook is anything with `every` (it runs after each step that is a multiple of it; 1:
every step, 0: never), `at_last` (it also runs after step train.num_steps) and `__call__(info)`; an
at-end hook is a callable of the final `StepInfo`. Hooks run in the order of their list: a hook may
read what an earlier one left in `info` (`logged`) and ask the loop to stop (`stop`). Adding
behaviour to the loop is a class here and a line in `train._hooks`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Optional, Protocol, Sequence

from absl import logging
import jax
import jax.numpy as jnp

from gkd_jax import checkpoints, evaluation, gkd, metrics, report
from gkd_jax import workdir as workdir_lib
from gkd_jax.finite import NonFiniteGuard
from gkd_jax.models.hf import save_pretrained


@dataclasses.dataclass
class StepInfo:
  """What the loop knows after a step; the hooks read it and may add to it."""

  step: int  # steps done: 1 after the first one
  num_steps: int  # train.num_steps
  state: Any  # gkd.TrainState after the step (donated by the next step: read it in the hook)
  metrics: dict = dataclasses.field(default_factory=dict)  # the step's metrics, device arrays
  teacher: Optional[str] = None  # several teachers: the name of the one that scored the batch
  logged: Optional[dict] = None  # the metrics LogMetrics wrote after this step (host floats)
  stop: bool = False  # set by a hook: the loop stops after this step (preemption)

  @property
  def last(self) -> bool:
    """Whether this is step train.num_steps, the last one."""
    return self.step == self.num_steps


class Hook(Protocol):
  """Runs after each step that is a multiple of `every` (0: never), and after the last step when
  `at_last`."""

  every: int
  at_last: bool

  def __call__(self, info: StepInfo) -> None:
    ...


def due(hook: Hook, info: StepInfo) -> bool:
  """Whether `hook` runs after `info.step`."""
  return bool(hook.every and info.step % hook.every == 0) or (hook.at_last and info.last)


class Hooks:
  """The hooks of a run: `after_step` ones at their interval, `at_end` ones once at the end."""

  def __init__(
      self,
      after_step: Sequence[Hook] = (),
      at_end: Sequence[Callable[[StepInfo], None]] = (),
  ):
    self.after_step, self.at_end = tuple(after_step), tuple(at_end)

  def run(self, info: StepInfo) -> None:
    """The after-step hooks due at `info.step`, in order."""
    for hook in self.after_step:
      if due(hook, info):
        hook(info)

  def end(self, info: StepInfo) -> None:
    """The at-end hooks, in order (a run that completed all its steps)."""
    for hook in self.at_end:
      hook(info)


# After each step.


class TeacherSums:
  """Several teachers: each one's token count and divergence x tokens since the last log, summed
  on the device (no host sync per step); nothing with one teacher."""

  every, at_last = 1, False

  def __init__(self):
    self.sums = {}  # teacher name -> {num_tokens, divergence x tokens}, device arrays

  def __call__(self, info: StepInfo) -> None:
    if info.teacher is None:
      return
    m = info.metrics
    n = m["num_tokens"]
    step = {"num_tokens": n, **({"divergence": m["divergence"] * n} if "divergence" in m else {})}
    sums = self.sums.get(info.teacher)
    self.sums[info.teacher] = step if sums is None else jax.tree.map(jnp.add, sums, step)

  def take(self) -> dict:
    """teacher/NAME/num_tokens and teacher/NAME/divergence (token mean) of the steps since the
    last take, for each teacher that had one; starts the next sums."""
    out = {}
    for name, sums in jax.device_get(self.sums).items():
      n = float(sums["num_tokens"])
      out[f"teacher/{name}/num_tokens"] = n
      if "divergence" in sums:
        out[f"teacher/{name}/divergence"] = float(sums["divergence"]) / max(n, 1.0)
    self.sums = {}
    return out


class NonFinite:
  """Hands each step's non-finite flag to the guard (finite.py) and has it check them where the loop
  syncs anyway: every multiple of one of `sync_every` (logging, checkpointing) and the last step,
  before the step's metrics or checkpoint."""

  every, at_last = 1, False

  def __init__(self, guard: NonFiniteGuard, sync_every: Sequence[int]):
    self.guard, self.sync_every = guard, tuple(sync_every)

  def __call__(self, info: StepInfo) -> None:
    self.guard.add(info.step, info.metrics)
    if any(info.step % n == 0 for n in self.sync_every) or info.last:
      self.guard.check()


class LogMetrics:
  """The step's metrics as a metrics.jsonl row, with the teachers' means and the wall time per step
  since the last row (the first includes compilation); left in `info.logged`."""

  at_last = True

  def __init__(
      self, writer: metrics.MetricWriter, teacher_sums: TeacherSums, every: int, step: int
  ):
    self.writer, self.teacher_sums, self.every = writer, teacher_sums, every
    self.tick, self.last_logged = time.perf_counter(), step

  def __call__(self, info: StepInfo) -> None:
    m = {k: float(v) for k, v in jax.device_get(info.metrics).items()}
    m.update(self.teacher_sums.take())
    now = time.perf_counter()
    m["step_time_s"] = (now - self.tick) / (info.step - self.last_logged)
    m["tokens_per_s"] = m["num_tokens"] / m["step_time_s"]
    self.tick, self.last_logged = now, info.step
    self.writer.write(info.step, m)
    info.logged = m


class ProgressBar:
  """Moves the bar to the step, with the logged metrics when there are some."""

  every, at_last = 1, False

  def __init__(self, progress: metrics.Progress):
    self.progress = progress

  def __call__(self, info: StepInfo) -> None:
    self.progress.update(info.step, info.logged)


class MismatchWarning:
  """Warns once (log and progress bar) when the logged sampler_logprob_diff_max exceeds
  gkd.MISMATCH_WARN: the sampler's and the loss's log-probabilities of the same tokens differ."""

  at_last = True

  def __init__(self, progress: metrics.Progress, every: int):
    self.progress, self.every = progress, every
    self.warned = False

  def __call__(self, info: StepInfo) -> None:
    diff = info.logged.get("sampler_logprob_diff_max", 0.0)
    if not self.warned and diff > gkd.MISMATCH_WARN:
      self.warned = True
      message = (
          f"step {info.step}: the sampler's and the loss's log-probabilities of the same "
          f"sampled tokens differ by up to {diff:.3g} (more "
          f"than {gkd.MISMATCH_WARN}): numerics (e.g. bfloat16) make the samples "
          "slightly off-policy; see sampler_logprob_* in metrics.jsonl"
      )
      logging.warning(message)
      self.progress.write("warning: " + message)


class PeriodicEvaluation:
  """The held-out evaluation as a metrics row and a line above the bar; not at the last step,
  whose evaluation is the final one (FinalEvaluation)."""

  at_last = False

  def __init__(self, run, steps, writer: metrics.MetricWriter, progress: metrics.Progress, every):
    self.run, self.steps, self.writer, self.progress, self.every = (
        run,
        steps,
        writer,
        progress,
        every,
    )

  def __call__(self, info: StepInfo) -> None:
    if info.last:
      return
    result = evaluation.evaluate(self.run, info.state.params, self.steps)
    self.writer.write(info.step, result)
    self.progress.write(
        f"step {info.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items())
    )


class Checkpoint:
  """Saves the state and the data iterator's position when the manager's interval says so."""

  every, at_last = 1, False  # the manager decides (train.checkpoint_every)

  def __init__(self, manager, data_iter):
    self.manager, self.data_iter = manager, data_iter

  def __call__(self, info: StepInfo) -> None:
    checkpoints.save(self.manager, info.step, info.state, self.data_iter)


class Preemption:
  """Stops the loop after a SIGTERM or a preemption notice, every process at the same step."""

  every, at_last = 1, False  # the guard decides when processes sync (train.preemption_check_every)

  def __init__(self, guard: checkpoints.PreemptionGuard):
    self.guard = guard

  def __call__(self, info: StepInfo) -> None:
    info.stop = self.guard.should_stop(info.step)


# Once training completes.


class FinalEvaluation:
  """The final held-out evaluation: the last metrics row (then the writer closes) and the summary's
  "after" fields."""

  def __init__(self, run, steps, writer: metrics.MetricWriter, summary):
    self.run, self.steps, self.writer, self.summary = run, steps, writer, summary

  def __call__(self, info: StepInfo) -> None:
    final = evaluation.evaluate(self.run, info.state.params, self.steps)
    self.writer.write(info.step, final)
    self.writer.close()
    self.summary.record_after(final)


class Export:
  """The student as an HF checkpoint in WORKDIR/student (every process takes part: the arrays span
  all of them; process 0 writes)."""

  def __init__(self, student, workdir: str):
    self.student, self.workdir = student, workdir

  def __call__(self, info: StepInfo) -> None:
    workdir_lib.replace_dir(
        os.path.join(self.workdir, "student"),
        lambda tmp: save_pretrained(tmp, self.student, info.state.params),
        lead=jax.process_index() == 0,
    )


class WriteSummary:
  """summary.json with the final evaluation (process 0)."""

  def __init__(self, summary):
    self.summary = summary

  def __call__(self, info: StepInfo) -> None:
    self.summary.write()


class PlotCurves:
  """WORKDIR/curves.png: the training curves of the keys a run always logs (those that vary)."""

  KEYS = ("divergence", "cross_entropy", "on_policy_fraction", "eval/divergence", "eval/accuracy")

  def __init__(self, workdir: str):
    self.workdir = workdir

  def __call__(self, info: StepInfo) -> None:
    path = os.path.join(self.workdir, metrics.METRICS_FILE)
    records = metrics.read_metrics(path)

    def values(key):
      return {r[key] for r in records if isinstance(r.get(key), float)}

    keys = [k for k in self.KEYS if len(values(k)) > 1]  # constant curves say nothing
    if keys:
      tmp = os.path.join(self.workdir, "curves.tmp.png")
      title = os.path.basename(os.path.normpath(self.workdir))
      metrics.plot_metrics(path, tmp, keys, title=title)
      os.replace(tmp, os.path.join(self.workdir, "curves.png"))


class PrintTable:
  """The run's `gkd-jax compare` table on stdout."""

  def __init__(self, workdir: str):
    self.workdir = workdir

  def __call__(self, info: StepInfo) -> None:
    print(report.compare_table([self.workdir]))
