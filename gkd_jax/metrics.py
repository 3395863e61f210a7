"""Metrics: JSON lines + TensorBoard scalars, a terminal progress bar, and plots for notebooks.

  writer = MetricWriter(workdir, jax.process_index(), resume_step=step)
  writer.write(step, {"loss": 0.3, "divergence": 0.2})   # WORKDIR/metrics.jsonl, WORKDIR/tb/
  progress = Progress(total_steps, initial_step=step)
  progress.update(step, metrics)                          # bar with ETA and a short postfix
  plot_metrics(WORKDIR/"metrics.jsonl", "loss.png", ["loss", "eval/accuracy"])

Only process 0 writes (other processes get a writer that does nothing), so multi-host runs produce
one log. metrics.jsonl is opened for appending: a resumed run keeps the lines of the earlier run. With
`resume_step`, lines of steps after it (written between the last checkpoint and the interruption, and
about to be recomputed) are dropped first, so the log reads like the uninterrupted run.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"
DEFAULT_POSTFIX = ("loss", "divergence", "on_policy_fraction", "tokens_per_s")


def _scalar(value):
  """A Python number for numbers and 0-d arrays (jax or numpy); None for anything else."""
  if isinstance(value, bool):
    return int(value)
  if isinstance(value, numbers.Number):
    return value.item() if hasattr(value, "item") else value
  if hasattr(value, "shape") and getattr(value, "shape", None) == ():
    return np.asarray(value).item()
  return None


def read_metrics(jsonl_path: str) -> list[dict]:
  """All records of a metrics.jsonl file, in order ([] if it does not exist).

  A torn last line (a crash in the middle of writing it) is dropped; a bad line before it is an
  error naming the file and line.
  """
  if not os.path.exists(jsonl_path):
    return []
  with open(jsonl_path, "rb") as f:
    lines = f.read().split(b"\n")
  records = []
  for lineno, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError):
      if all(not rest.strip() for rest in lines[lineno:]):
        break  # the torn last line
      raise ValueError(f"{jsonl_path}:{lineno}: not a JSON metrics record") from None
  return records


class MetricWriter:
  """Writes {"step": step, **metrics} per call to JSONL and TensorBoard, on process 0 only."""

  def __init__(
      self,
      workdir: str,
      process_index: int = 0,
      resume_step: Optional[int] = None,
      tensorboard: bool = True,
  ):
    self.active = process_index == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    self._file = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None and os.path.exists(self.path):
      kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        for r in kept:
          f.write(json.dumps(r) + "\n")
      os.replace(tmp, self.path)  # atomic: an interruption here loses nothing
    self._file = open(self.path, "a")  # noqa: SIM115  (the writer's lifetime; close())
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

      self._tb = SummaryWriter(logdir=os.path.join(workdir, TB_DIR), flush_secs=30)

  def write(self, step: int, metrics: Mapping[str, object]) -> None:
    """One JSON line; numeric values also as TensorBoard scalars (strings etc. go to JSON only)."""
    if not self.active:
      return
    record = {"step": int(step)}
    for key, value in metrics.items():
      s = _scalar(value)
      record[key] = s if s is not None else value
    self._file.write(json.dumps(record, default=str) + "\n")
    self._file.flush()
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(key, value, int(step))

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _format(value) -> str:
  if isinstance(value, float):
    if not math.isfinite(value):
      return str(value)
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
      return f"{value:.2e}"
    return f"{value:.4g}"
  return str(value)


class Progress:
  """A tqdm bar over training steps: rate, ETA, and a short postfix of chosen metrics."""

  def __init__(
      self,
      total_steps: int,
      initial_step: int = 0,
      keys: Sequence[str] = DEFAULT_POSTFIX,
      enabled: Optional[bool] = None,
      file=None,
      desc: str = "train",
  ):
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

    if enabled is None:
      import jax  # pylint: disable=import-outside-toplevel

      enabled = jax.process_index() == 0
    self.keys = tuple(keys)
    self.bar = tqdm(
        total=total_steps,
        initial=initial_step,
        unit="step",
        desc=desc,
        dynamic_ncols=True,
        disable=not enabled,
        file=file,
        smoothing=0.1,
    )
    self.step = initial_step

  def update(self, step: int, metrics: Optional[Mapping[str, object]] = None) -> None:
    """Moves the bar to `step`; with `metrics`, shows the chosen keys that are present."""
    if step > self.step:
      self.bar.update(step - self.step)
      self.step = step
    if metrics:
      postfix = {
          k: _format(_scalar(metrics[k]))
          for k in self.keys
          if k in metrics and _scalar(metrics[k]) is not None
      }
      if postfix:
        self.bar.set_postfix(postfix, refresh=False)

  def write(self, message: str) -> None:
    """A line above the bar (e.g. evaluation results) without breaking it."""
    self.bar.write(message)

  def close(self) -> None:
    self.bar.close()


def plot_metrics(jsonl_path: str, out_png: str, keys: Iterable[str], title: str = "") -> str:
  """One panel per key (value against step) from a metrics.jsonl file; returns `out_png`."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  records = read_metrics(jsonl_path)
  keys = list(keys)
  series = {}
  for key in keys:
    points = [
        (r["step"], r[key])
        for r in records
        if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
    ]
    if not points:
      raise ValueError(f"{jsonl_path} has no numeric values for {key!r}")
    series[key] = np.asarray(points, dtype=np.float64)
  fig, axes = plt.subplots(len(keys), 1, figsize=(6, 2.2 * len(keys)), sharex=True, squeeze=False)
  for ax, key in zip(axes[:, 0], keys):
    xy = series[key]
    ax.plot(xy[:, 0], xy[:, 1], marker="." if len(xy) < 50 else None)
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
  axes[-1, 0].set_xlabel("step")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png, dpi=100)
  plt.close(fig)
  return out_png
