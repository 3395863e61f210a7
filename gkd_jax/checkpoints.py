"""Orbax checkpoints of the train state plus the Grain data iterator; resume; SIGTERM/preemption.

  manager = make_manager(workdir / "checkpoints", keep=3, save_every=200, async_save=True)
  restored = restore_latest(manager, abstract_state, data_iter)   # None on a fresh run
  with PreemptionGuard() as guard:
    for step in ...:
      ...
      save(manager, step, state, data_iter)                      # every `save_every` steps
      if guard.should_stop(step):
        save(manager, step, state, data_iter, force=True); manager.wait_until_finished(); exit
  save(manager, last_step, state, data_iter, force=True); manager.wait_until_finished()

A checkpoint is one step directory with two items: "state" (the train-state pytree, written by
Orbax's StandardSave, asynchronously when asked) and "data" (the Grain iterator position, written
synchronously by Grain's own Orbax handler, so the iterator can advance right after `save` returns).
Orbax writes every step to a temporary directory and renames it when complete, so `latest_step` and
`restore_latest` only ever see complete checkpoints; an interrupted save leaves nothing restorable.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Optional

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

STATE, DATA = "state", "data"


def make_manager(directory: str, *, keep: int = 3, save_every: int = 1,
                 async_save: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager keeping the newest `keep` steps and saving every `save_every` steps."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=save_every, enable_async_checkpointing=async_save,
      create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_handlers={STATE: ocp.StandardCheckpointHandler(),
                                              DATA: grain.checkpoint.CheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, train_state: Any, data_iter=None,
         force: bool = False) -> bool:
  """Saves at `step` if the manager's interval says so (or `force`); True when a save started.

  A step that already has a checkpoint is skipped, so a forced save right after a periodic one at
  the same step is harmless.
  """
  step = int(step)
  if step in manager.all_steps():
    return False
  items = {STATE: ocp.args.StandardSave(train_state)}
  if data_iter is not None:
    items[DATA] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def _has_item(manager: ocp.CheckpointManager, step: int, name: str) -> bool:
  return os.path.isdir(os.path.join(str(manager.directory), str(step), name))


def restore_latest(manager: ocp.CheckpointManager, abstract_train_state: Any,
                   data_iter=None) -> Optional[tuple[int, Any]]:
  """(step, train_state) from the newest complete checkpoint, or None when there is none.

  `abstract_train_state` is a pytree of jax.ShapeDtypeStruct with `.sharding` set: every array is
  restored directly with that sharding (any mesh, not necessarily the one it was saved from).
  `data_iter`, when given, is moved to the position saved with the checkpoint (in place).
  """
  manager.wait_until_finished()
  step = manager.latest_step()
  if step is None:
    return None
  items = {STATE: ocp.args.StandardRestore(abstract_train_state)}
  if data_iter is not None:
    if not _has_item(manager, step, DATA):
      raise ValueError(f"checkpoint {manager.directory}/{step} has no data iterator state; "
                       "cannot resume the input pipeline")
    items[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return step, restored[STATE]


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays: the target for `restore_latest`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class PreemptionGuard:
  """Context manager turning SIGTERM (and TPU preemption notices) into a clean stop request.

  Inside the context a SIGTERM does not kill the process; it sets a flag. `should_stop(step)` is
  True once the flag is set on any process or JAX's preemption sync point is reached (on TPU pods,
  where `jax.distributed` runs the preemption service). With several processes only every
  `sync_every`-th step is a check (a tiny all-gather of the flags plus the preemption sync point):
  every process must call `should_stop` at every step, all get False between checks, and all stop
  together at the same check step. A single process checks its flag at every step, for free. The
  previous signal handlers are restored on exit.
  """

  def __init__(self, signals=(signal.SIGTERM,), sync_every: int = 1):
    if int(sync_every) < 1:
      raise ValueError(f"sync_every={sync_every} must be >= 1")
    self.sync_every = int(sync_every)
    self.signals = tuple(signals)
    self._stop = threading.Event()
    self._previous = {}

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    self._stop.set()

  def __enter__(self) -> "PreemptionGuard":
    if threading.current_thread() is threading.main_thread():
      for sig in self.signals:
        self._previous[sig] = signal.signal(sig, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}

  def request_stop(self) -> None:
    """What a signal does; also usable from code (e.g. a wall-clock budget)."""
    self._stop.set()

  @property
  def stop_requested(self) -> bool:
    """Local view only (this process received the signal)."""
    return self._stop.is_set()

  def should_stop(self, step: int) -> bool:
    """True when training should save and exit at `step` (same answer on every process)."""
    every = self.sync_every if jax.process_count() > 1 else 1
    if int(step) % every:
      return False
    stop = self._stop.is_set()
    try:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      if jax.process_count() > 1:
        flags = multihost_utils.process_allgather(np.asarray([stop], np.int32))
        stop = bool(np.any(flags))
      # The sync point counts checks (consecutive integers), not steps.
      stop = stop or bool(multihost_utils.reached_preemption_sync_point(int(step) // every))
    except (RuntimeError, ValueError, AttributeError):
      pass  # no preemption service (single process, CPU/GPU): the signal flag alone decides
    if stop:
      self._stop.set()
    return stop
