"""Orbax checkpoints of the train state plus the Grain data iterator; resume; SIGTERM/preemption.

  manager = make_manager(workdir / "checkpoints", keep=3, save_every=200, async_save=True)
  restored = restore_latest(manager, abstract_state, data_iter)   # None on a fresh run
  with PreemptionGuard() as guard:
    for step in ...:
      ...
      save(manager, step, state, data_iter)                      # every `save_every` steps
      if guard.should_stop(step):
        save(manager, step, state, data_iter, force=True); manager.wait_until_finished(); exit
  save(manager, last_step, state, data_iter, force=True); finish(manager)

A checkpoint is one step directory with two items: "state" (the train-state pytree, written by
Orbax's StandardSave, asynchronously when asked) and "data" (the Grain iterator position, written
synchronously by Grain's own Orbax handler, so the iterator can advance right after `save` returns).
Orbax writes every step to a temporary directory and renames it when complete, so `latest_step` and
`restore_latest` only ever see complete checkpoints; an interrupted save leaves nothing restorable.

Integrity: once a checkpoint is complete, STEP/checksums.json records the size and CRC32 of each of
its files (process 0 writes it before the next save starts, and in `finish`). `restore_latest` takes
the newest checkpoint whose files still match (and that restores to finite values): a damaged one is
reported in one line and moved to CHECKPOINTS.damaged/STEP, and the next older one is tried.
"""

from __future__ import annotations

import os
import signal
import threading
import zlib
from typing import Any, Optional

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from gkd_jax import workdir as workdir_lib

STATE, DATA = "state", "data"
CHECKSUMS = "checksums.json"


def make_manager(
    directory: str, *, keep: int = 3, save_every: int = 1, async_save: bool = True
) -> ocp.CheckpointManager:
  """A CheckpointManager keeping the newest `keep` steps and saving every `save_every` steps."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      save_interval_steps=save_every,
      enable_async_checkpointing=async_save,
      create=True,
      cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=options,
      item_handlers={
          STATE: ocp.StandardCheckpointHandler(),
          DATA: grain.checkpoint.CheckpointHandler(),
      },
  )


def save(
    manager: ocp.CheckpointManager, step: int, train_state: Any, data_iter=None, force: bool = False
) -> bool:
  """Saves at `step` if the manager's interval says so (or `force`); True when a save started.

  A step that already has a checkpoint is skipped, so a forced save right after a periodic one at
  the same step is harmless.
  """
  step = int(step)
  if step in manager.all_steps() or not (force or manager.should_save(step)):
    return False
  manager.wait_until_finished()  # what manager.save does first anyway
  record_checksums(manager)  # the previous checkpoint is complete now
  items = {STATE: ocp.args.StandardSave(train_state)}
  if data_iter is not None:
    items[DATA] = grain.checkpoint.CheckpointSave(data_iter)
  saved = manager.save(step, args=ocp.args.Composite(**items), force=True)
  record_checksums(manager)  # a synchronous save is complete already
  return saved


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for a pending save and records the checksums of every complete checkpoint."""
  manager.wait_until_finished()
  record_checksums(manager)


def _step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def _has_item(manager: ocp.CheckpointManager, step: int, name: str) -> bool:
  return os.path.isdir(os.path.join(_step_dir(manager, step), name))


def _digest(step_dir: str) -> dict:
  """{relative path: [size, crc32]} of every file of a checkpoint (but the checksum file)."""
  out = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      full = os.path.join(root, name)
      rel = os.path.relpath(full, step_dir)
      if rel == CHECKSUMS:
        continue
      crc = 0
      with open(full, "rb") as f:
        while chunk := f.read(1 << 24):
          crc = zlib.crc32(chunk, crc)
      out[rel] = [os.path.getsize(full), crc]
  return out


def record_checksums(manager: ocp.CheckpointManager) -> None:
  """Writes STEP/checksums.json for each complete checkpoint without one (process 0 only)."""
  if jax.process_index() != 0 or manager.is_saving_in_progress():
    return
  for step in manager.all_steps():
    d = _step_dir(manager, step)
    if os.path.isdir(d) and not os.path.exists(os.path.join(d, CHECKSUMS)):
      workdir_lib.write_json(os.path.join(d, CHECKSUMS), _digest(d))


def verify(manager: ocp.CheckpointManager, step: int) -> Optional[str]:
  """What is wrong with checkpoint `step` against its checksums; None when it matches, and
  "unverified" when it has no checksums (a run stopped before writing them)."""
  d = _step_dir(manager, step)
  path = os.path.join(d, CHECKSUMS)
  if not os.path.exists(path):
    return "unverified"
  try:
    want = workdir_lib.read_json(path)
  except ValueError as e:
    return str(e)
  got = _digest(d)
  for rel, (size, crc) in sorted(want.items()):
    if rel not in got:
      return f"{rel} is missing"
    if got[rel][0] != size:
      return f"{rel} has {got[rel][0]} bytes, {size} when written"
    if got[rel][1] != crc:
      return f"{rel} has changed since it was written (CRC32 mismatch)"
  return None


def _set_aside(manager: ocp.CheckpointManager, step: int, problem: str) -> None:
  src = _step_dir(manager, step)
  dst_root = str(manager.directory) + ".damaged"
  dst = os.path.join(dst_root, str(step))
  if jax.process_index() == 0:
    os.makedirs(dst_root, exist_ok=True)
    n = 1
    while os.path.exists(dst):
      dst, n = os.path.join(dst_root, f"{step}.{n}"), n + 1
    os.rename(src, dst)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"gkd_jax_set_aside_{step}")
  logging.warning(
      "checkpoint %s is damaged (%s); moved it to %s and trying the one before", src, problem, dst
  )
  manager.reload()


def _all_finite(tree) -> bool:
  return all(
      bool(jnp.all(jnp.isfinite(x)))
      for x in jax.tree.leaves(tree)
      if jnp.issubdtype(x.dtype, jnp.inexact)
  )


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def restore_latest(
    manager: ocp.CheckpointManager, abstract_train_state: Any, data_iter=None
) -> Optional[tuple[int, Any]]:
  """(step, train_state) from the newest intact checkpoint, or None when there is none.

  `abstract_train_state` is a pytree of jax.ShapeDtypeStruct with `.sharding` set: every array is
  restored directly with that sharding (any mesh, not necessarily the one it was saved from).
  `data_iter`, when given, is moved to the position saved with the checkpoint (in place).
  """
  manager.wait_until_finished()
  for step in sorted(manager.all_steps(), reverse=True):
    problem = verify(manager, step)
    if problem not in (None, "unverified"):
      _set_aside(manager, step, problem)
      continue
    items = {STATE: ocp.args.StandardRestore(abstract_train_state)}
    if data_iter is not None:
      if not _has_item(manager, step, DATA):
        raise ValueError(
            f"checkpoint {manager.directory}/{step} has no data iterator state; "
            "cannot resume the input pipeline"
        )
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      state = manager.restore(step, args=ocp.args.Composite(**items))[STATE]
    except Exception as e:  # pylint: disable=broad-except
      if problem is None:  # intact files: the checkpoint is fine but does not fit this run
        raise ValueError(
            f"checkpoint {_step_dir(manager, step)} does not fit this run " f"({_first_line(e)})"
        ) from None
      _set_aside(manager, step, f"unreadable: {_first_line(e)}")
      continue
    if not _all_finite(state):
      _set_aside(manager, step, "it holds non-finite values")
      continue
    return step, state
  return None


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
