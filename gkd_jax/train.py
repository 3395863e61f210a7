"""The one trainer: config -> mesh + models + data (`build`) -> the loop (gkd_jax.loop) with its hooks
(gkd_jax.hooks) -> checkpoints, metrics, the final evaluation (gkd_jax.evaluation) and export.

Everything that can fail on bad input (config values, paths, data lines, vocabularies) is checked
before anything is written to the workdir, so a bad launch never damages an existing run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from typing import Any, Optional

import jax
from jax.experimental import multihost_utils

from gkd_jax import batches, checkpoints, config_validation, data, evaluation, gkd, kernels
from gkd_jax import hooks as hooks_lib
from gkd_jax import loading, loop, metrics, models, programs, run_config, sharding, teacher_sources
from gkd_jax import workdir as workdir_lib
from gkd_jax.finite import NonFiniteGuard
from gkd_jax.models.presets import get_preset
from gkd_jax.run_config import RunConfig
from gkd_jax.summary import Summary
from gkd_jax.tokenizers import load_tokenizer


@dataclasses.dataclass
class Run:
  """What a config builds before the loop starts."""

  config: RunConfig  # typed and validated (gkd_jax.run_config)
  mesh: jax.sharding.Mesh
  tokenizer: Any
  student: Any
  params: Any
  param_shardings: Any
  source: Any  # teacher_sources: where the teacher comes from (none, live, routed, cached)
  settings: gkd.GKDSettings

  # The source's teachers, for readers that need one of them.
  @property
  def teacher(self):
    """The model of the one teacher in memory (None: none, or several)."""
    return None if self.source.live is None else self.source.live.model

  @property
  def teacher_params(self):
    return None if self.source.live is None else self.source.live.params

  @property
  def teachers(self) -> tuple:
    """Several teachers (teacher_sources.Teacher), in batch["teacher_index"] order; () for one."""
    return self.source.routed


def divergence_layout(mesh, rules, vocab_size) -> Optional[kernels.Layout]:
  """How the divergence is laid out on the mesh: tokens over the batch axes, and the vocabulary
  over one mesh axis when the rules shard it (vocab-parallel: only [N] vectors cross devices)."""
  axis = dict(rules).get("vocab")
  vocab_sharded = (
      isinstance(axis, str) and mesh.shape[axis] > 1 and vocab_size % mesh.shape[axis] == 0
  )
  token_axes = tuple(a for a in sharding.batch_axes(rules) if mesh.shape[a] > 1 and a != axis)
  if not vocab_sharded and not token_axes:
    return None
  return kernels.Layout(mesh, vocab_axis=axis if vocab_sharded else None, token_axes=token_axes)


def build(config, mode: str = "train", devices=None) -> Run:
  """Validates the config and loads tokenizer and models onto the mesh. Writes nothing.

  mode: "train" | "eval" | "sample" (sampling needs no teacher and no data).
  devices: the devices of the mesh (default: all).
  """
  devices = jax.devices() if devices is None else devices
  config = config_validation.validate(config, num_devices=len(devices), mode=mode)
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = config.sharding_rules
  tokenizer = load_tokenizer(config.tokenizer.path or config.student.path)
  scan = run_config.scan_layers(config, devices[0].platform)
  student, params = _student(config, mesh, rules, scan)
  source = teacher_sources.load(config, mode, tokenizer, student, mesh, rules)
  if tokenizer.vocab_size > student.config.vocab_size:
    raise ValueError(
        f"tokenizer has {tokenizer.vocab_size} tokens but the student's vocabulary "
        f"is {student.config.vocab_size}"
    )
  if config.data.eval_path and mode != "sample":
    data.read_jsonl_records(config.data.eval_path)  # a malformed line fails before any write
  settings = gkd.GKDSettings.from_config(
      config,
      eos_id=stop_ids(tokenizer, config.data.chat_family),
      layout=divergence_layout(mesh, rules, student.config.vocab_size),
  )
  param_shardings = loading.param_shardings(student, mesh, rules)
  return Run(config, mesh, tokenizer, student, params, param_shardings, source, settings)


def _student(config, mesh, rules, scan_layers: bool):
  """(model, params) of the student: its checkpoint (student.path), or a preset initialised from
  the seed; scanned over layers or looped (model.scan_layers)."""
  if config.student.path:
    return loading.load_model(config.student, mesh, rules, scan_layers)
  student = models.build(
      get_preset(config.student.preset), models.DTYPES[config.student.dtype], scan_layers
  )
  params = models.init(
      student, jax.random.key(config.seed), shardings=loading.param_shardings(student, mesh, rules)
  )
  return student, params


def stop_ids(tokenizer, chat_family="") -> tuple:
  """Ids that end a sampled completion: the chat end-of-turn token (what dataset completions end
  with) first, then every EOS the checkpoint declares."""
  first = data.completion_end_id(tokenizer, chat_family or None)
  return tuple(dict.fromkeys((first, *tokenizer.stop_ids)))


def train(config, workdir: str, restart: bool = False) -> dict:
  """Runs (or resumes) training in `workdir`; returns the final summary.

  The workdir is locked for the run, and a resume must use the recorded config (gkd_jax.workdir);
  `restart` removes an earlier run's outputs first.
  """
  run = build(config)
  c = run.config
  data_iter = iter(
      batches.loader(
          run,
          c.data.train_path,
          batch_size=c.train.batch_size,
          shuffle=c.data.shuffle,
          num_epochs=c.data.num_epochs,
          row_extras=run.source.row_extras,
      )
  )
  lock = _claim_workdir(_as_run(config, run), workdir, restart)
  try:
    return _train(run, data_iter, workdir)
  finally:
    if lock is not None:
      lock.release()


def _as_run(config, run: Run):
  """The user's config with what "auto" resolved to on this platform (model.scan_layers: the form
  of the parameters in the checkpoints), so the workdir records what a resume must match."""
  recorded = copy.deepcopy(config)
  recorded.model.scan_layers = bool(run.student.scan_layers)
  return recorded


def _claim_workdir(config, workdir: str, restart: bool):
  """Lock (process 0), optional restart, config record; raises before anything else is written."""
  workdir_lib.prepare(workdir)
  lead = jax.process_index() == 0
  lock = workdir_lib.acquire_lock(workdir) if lead else None
  try:
    if restart and lead:
      workdir_lib.restart(workdir)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("gkd_jax_restart")
    workdir_lib.check_config(
        workdir, config, resuming=workdir_lib.has_checkpoints(workdir), write=lead
    )
  except BaseException:
    if lock is not None:
      lock.release()
    raise
  return lock


@contextlib.contextmanager
def _finishing(manager, writer, progress):
  """On an error in the loop: let a checkpoint in flight complete, close metrics and progress."""
  try:
    yield
  except BaseException:
    checkpoints.finish(manager)
    writer.close()
    progress.close()
    raise


def _train(run: Run, data_iter, workdir: str) -> dict:
  """The run in a claimed workdir: restore or start the state, evaluate the init (step 0), run the
  loop with its hooks, then save the last checkpoint and, unless stopped, run the at-end hooks."""
  c = run.config
  steps = programs.compile_steps(run)
  manager = checkpoints.make_manager(
      os.path.join(workdir, "checkpoints"),
      keep=c.train.keep_checkpoints,
      save_every=c.train.checkpoint_every,
      async_save=c.train.async_checkpoints,
  )
  restored = checkpoints.restore_latest(manager, steps.abstract_state, data_iter)
  state = steps.init_state(run.params) if restored is None else restored[1]
  step = int(state.step)
  writer = metrics.MetricWriter(workdir, jax.process_index(), resume_step=step)
  summary = Summary(workdir)
  if step == 0:  # the init: a metrics row at step 0 and the summary's "before" fields
    before = evaluation.evaluate(run, state.params, steps)
    writer.write(0, before)
    summary.record_before(before, evaluation.teacher_metrics(run))
  progress = metrics.Progress(c.train.num_steps, step)
  finite = NonFiniteGuard(c.train.max_nonfinite_steps, int(state.nonfinite_steps))
  with (
      checkpoints.PreemptionGuard(sync_every=c.train.preemption_check_every) as guard,
      _finishing(manager, writer, progress),
  ):
    hooks = _hooks(
        run,
        steps,
        workdir=workdir,
        step=step,
        writer=writer,
        progress=progress,
        summary=summary,
        manager=manager,
        data_iter=data_iter,
        finite=finite,
        guard=guard,
    )
    state, step, stopped = loop.run_steps(run, steps, state, data_iter, hooks)
    finite.check()  # the steps since the last check (a stop between logs)
  checkpoints.save(manager, step, state, data_iter, force=True)
  checkpoints.finish(manager)
  progress.close()
  if stopped:
    writer.close()
    raise SystemExit(
        f"stopped by SIGTERM/preemption at step {step}; checkpoint saved, run the "
        "same command again to resume"
    )
  hooks.end(hooks_lib.StepInfo(step, c.train.num_steps, state))
  return summary.data


def _hooks(
    run, steps, *, workdir, step, writer, progress, summary, manager, data_iter, finite, guard
) -> hooks_lib.Hooks:
  """What the loop does after each step, in this order, and once training completes.

  `step` is the one the loop starts from (the first row's step time counts from it); the others are
  what the hooks write to (metrics.jsonl, the bar, summary.json, checkpoints) and the two guards.
  """
  t = run.config.train
  teacher_sums = hooks_lib.TeacherSums()
  lead = jax.process_index() == 0
  return hooks_lib.Hooks(
      after_step=[
          teacher_sums,
          hooks_lib.NonFinite(finite, sync_every=(t.log_every, t.checkpoint_every)),
          hooks_lib.LogMetrics(writer, teacher_sums, every=t.log_every, step=step),
          hooks_lib.ProgressBar(progress),
          hooks_lib.MismatchWarning(progress, every=t.log_every),
          hooks_lib.PeriodicEvaluation(run, steps, writer, progress, every=t.eval_every),
          hooks_lib.Checkpoint(manager, data_iter),
          hooks_lib.Preemption(guard),
      ],
      at_end=[
          hooks_lib.FinalEvaluation(run, steps, writer, summary),
          *([hooks_lib.Export(run.student, workdir)] if t.export_final else []),
          *(
              [
                  hooks_lib.WriteSummary(summary),
                  hooks_lib.PlotCurves(workdir),
                  hooks_lib.PrintTable(workdir),
              ]
              if lead
              else []
          ),
      ],
  )


def evaluate_checkpoint(config) -> dict:
  """Held-out loss terms and the task metric of `config.student` (what `gkd-jax eval` prints)."""
  run = build(config, mode="eval")
  return evaluation.evaluate(run, run.params, programs.compile_steps(run))
