"""The run directory: who owns it, which experiment it holds, and files that are written whole.

  prepare(workdir)                      # a directory (not a file); created if missing
  lock = acquire_lock(workdir)          # WORKDIR/lock; WorkdirBusy if a live process holds it
  check_config(workdir, config, resuming=has_checkpoints(workdir))   # WORKDIR/config.json
  write_json(path, obj)                 # temp file + fsync + os.replace: never half written
  restart(workdir)                      # what `gkd-jax train --restart` does: drop the old run

The lock is an exclusive `flock` on WORKDIR/lock, which also names its holder (pid, host, start
time). The kernel drops it when the holder dies, so the lock of a killed run is taken over by the
next one (on filesystems without `flock`, a lock naming a dead pid on this host is). A second live
process gets one line naming the holder.

WORKDIR/config.json records the config of the run (every field) and the identity of its inputs
(size and a hash of the first 64 MiB of the data file and of each model / tokenizer file) when it
first starts. A resume compares: a changed experiment-defining field refuses with one line listing
the differences. The fields in SAFE_TO_CHANGE change how a run is logged, checkpointed, evaluated or
laid out on devices, not what it computes, and may differ; `train.num_steps` may too when the
learning-rate schedule does not depend on it (`optim.schedule="constant"`). Paths are compared by
what they point to, so moved files with the same content are fine.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from typing import Any, Optional

from absl import logging

LOCK = "lock"
RECORD = "config.json"
CHECKPOINTS = "checkpoints"
# What `restart` removes: every file a run writes (and nothing else the user keeps there).
RUN_OUTPUTS = (
    CHECKPOINTS,
    CHECKPOINTS + ".damaged",
    "metrics.jsonl",
    "summary.json",
    "tb",
    "student",
    "curves.png",
    RECORD,
)
# Fields a resume may change (a trailing "." covers the whole group).
SAFE_TO_CHANGE = (
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.async_checkpoints",
    "train.export_final",
    "train.max_nonfinite_steps",
    "train.preemption_check_every",
    "train.remat",
    "gkd.kernel_impl",
    "eval.",
    "data.eval_path",
    "task.name",
    "mesh.",
    "sharding_rules",
)
# Fields that runs recorded before the field existed had implicitly (the value they ran with).
LEGACY = {"model.scan_layers": False}
# Compared by the identity of what they point to, not by the path string.
PATH_FIELDS = ("student.path", "teacher.path", "tokenizer.path", "data.train_path")
_MODEL_FILES = (
    ".safetensors",
    ".safetensors.index.json",
    "config.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
)
_HASHED_BYTES = 64 << 20


class WorkdirBusy(ValueError):
  """Another live process holds the workdir's lock."""


# ------------------------------------------------------------------------------- atomic files


def atomic_write(path: str, data) -> None:
  """Writes `data` (str or bytes) to `path` so that readers see the old file or the new one."""
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data.encode() if isinstance(data, str) else data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
  atomic_write(path, json.dumps(obj, indent=1) + "\n")


def read_json(path: str) -> Any:
  """The JSON in `path`; ValueError naming the file when it is empty or not JSON."""
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    what = "empty" if not raw.strip() else f"not valid JSON ({e})"
    raise ValueError(f"{path}: {what}") from None


def replace_dir(path: str, write, lead: bool = True) -> None:
  """Calls write(tmp_dir), then puts tmp_dir at `path`; an interrupted write leaves the old `path`
  (or none) in place, never a partial one. Every process calls it; only the `lead` one touches
  the filesystem (as `write` itself should)."""
  tmp, old = path + ".tmp", path + ".old"
  if lead:
    for d in (tmp, old):
      shutil.rmtree(d, ignore_errors=True)
  try:
    write(tmp)
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":  # e.g. a full disk
      raise ValueError(f"writing {tmp} failed ({e}); {path} is unchanged") from None
    raise
  if lead:
    if os.path.exists(path):
      os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------- the directory


def prepare(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir} exists and is not a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"--workdir={workdir} cannot be created: {e.strerror}") from None


def has_checkpoints(workdir: str) -> bool:
  d = os.path.join(workdir, CHECKPOINTS)
  return os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))


def restart(workdir: str) -> None:
  """Removes the outputs of an earlier run in `workdir` (what `--restart` asks for)."""
  for name in RUN_OUTPUTS:
    p = os.path.join(workdir, name)
    if os.path.isdir(p):
      shutil.rmtree(p)
    elif os.path.exists(p):
      os.remove(p)


# ------------------------------------------------------------------------------------- the lock


class Lock:
  """A held workdir lock; `release()` (or process exit) frees it."""

  def __init__(self, path: str, fd: int):
    self.path, self._fd = path, fd

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # a clean end names no holder; a killed one's lock still does
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def _holder(fd: int) -> Optional[dict]:
  try:
    raw = os.pread(fd, 4096, 0)
    holder = json.loads(raw.decode())
    return holder if isinstance(holder, dict) else None
  except (OSError, ValueError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _busy(workdir: str, holder: Optional[dict]) -> WorkdirBusy:
  who = (
      f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('since')})"
      if holder
      else "another process"
  )
  return WorkdirBusy(
      f"--workdir={workdir} is in use by {who}; wait for that run to end or stop "
      f"it (its lock: {os.path.join(workdir, LOCK)})"
  )


def acquire_lock(workdir: str) -> Lock:
  """Takes WORKDIR/lock or raises WorkdirBusy naming the live holder."""
  path = os.path.join(workdir, LOCK)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  host = socket.gethostname()
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _holder(fd)
    os.close(fd)
    raise _busy(workdir, holder) from None
  except OSError as e:  # no flock here (some network filesystems): judge by the recorded pid
    if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
      raise
    holder = _holder(fd)
    if holder and (
        holder.get("host") != host
        or (holder.get("pid") != os.getpid() and _alive(int(holder.get("pid", 0))))
    ):
      os.close(fd)
      raise _busy(workdir, holder) from None
  previous = _holder(fd)
  if previous and previous.get("pid") != os.getpid():
    logging.warning(
        "%s: taking over the lock of pid %s on %s, which is no longer running",
        workdir,
        previous.get("pid"),
        previous.get("host"),
    )
  me = json.dumps(
      {"pid": os.getpid(), "host": host, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
  ).encode()
  os.ftruncate(fd, 0)
  os.pwrite(fd, me, 0)
  os.fsync(fd)
  return Lock(path, fd)


# --------------------------------------------------------------------------- the config record


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = json.loads(json.dumps(value, default=str))  # tuples -> lists, as stored
  return out


def _file_identity(path: str) -> list:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    h.update(f.read(_HASHED_BYTES))
  return [os.path.getsize(path), h.hexdigest()[:16]]


def identity(path: str) -> Any:
  """What a path field points to: [size, hash] of a file, or of each model/tokenizer file of a
  directory; None when unset or missing."""
  if not path or not os.path.exists(path):
    return None
  if os.path.isfile(path):
    return _file_identity(path)
  return {
      name: _file_identity(os.path.join(path, name))
      for name in sorted(os.listdir(path))
      if name.endswith(_MODEL_FILES) and os.path.isfile(os.path.join(path, name))
  }


def describe(config) -> dict:
  """The record of a config: every field, and the identity of every path field."""
  fields = _flatten(config.to_dict())
  return {"config": fields, "identities": {f: identity(fields.get(f, "")) for f in PATH_FIELDS}}


def _safe(field: str) -> bool:
  return any(field == s or (s.endswith(".") and field.startswith(s)) for s in SAFE_TO_CHANGE)


def _num_steps_safe(old: dict, new: dict) -> bool:
  """Whether the optimizer does the same thing at every step for both train.num_steps."""
  if new.get("optim.schedule") != "constant":
    return False
  accum = max(1, int(new.get("optim.grad_accum_steps", 1)))
  updates = min(int(old["train.num_steps"]), int(new["train.num_steps"])) // accum
  return int(new.get("optim.warmup_steps", 0)) < updates


def _short(value) -> str:
  text = json.dumps(value)
  return text if len(text) <= 40 else text[:37] + "..."


def differences(recorded: dict, current: dict) -> list[str]:
  """Experiment-defining differences between two records, as "field: old -> new" strings."""
  old, new = recorded.get("config", {}), current["config"]
  out = []
  for field in sorted(set(old) | set(new)):
    a, b = old.get(field, LEGACY.get(field, "<unset>")), new.get(field, "<unset>")
    if a == b or _safe(field) or field in PATH_FIELDS:
      continue
    if field == "train.num_steps" and _num_steps_safe(old, new):
      continue
    note = " (the learning-rate schedule depends on it)" if field == "train.num_steps" else ""
    out.append(f"{field}: {_short(a)} -> {_short(b)}{note}")
  old_ids, new_ids = recorded.get("identities", {}), current["identities"]
  for field in PATH_FIELDS:
    if old_ids.get(field) != new_ids.get(field):
      out.append(
          f"{field}: the content differs from the recorded run's "
          f"({_short(old.get(field))} -> {_short(new.get(field))})"
      )
  return out


def check_config(workdir: str, config, resuming: bool, write: bool = True) -> None:
  """Refuses (ValueError, one line) to resume a run whose experiment-defining config differs from
  the recorded one; records the current config (only `write`, i.e. on process 0)."""
  path = os.path.join(workdir, RECORD)
  current = describe(config)
  recorded = read_json(path) if os.path.exists(path) else None
  if recorded is not None and not isinstance(recorded, dict):
    raise ValueError(f"{path}: not a config record (a JSON object)")
  if recorded is not None and resuming:
    diffs = differences(recorded, current)
    if diffs:
      raise ValueError(
          f"--workdir={workdir} holds a run with another config ({'; '.join(diffs)}); "
          "resume it with the same config, or pass --restart to start over (deletes "
          "its checkpoints and metrics)"
      )
  if write and recorded != current:
    write_json(path, current)
