"""WORKDIR/summary.json: a run's evaluations before and after training (what `gkd-jax compare`,
gkd_jax.report, reads), written whole by process 0.

  summary = Summary(workdir)                   # the earlier run's fields when resuming
  summary.record_before(before, teacher_metrics)   # step 0: the init's and the teachers' metrics
  summary.record_after(final)                  # the final evaluation
  summary.write()

Fields: student_before / eval_before, teacher / teacher_eval or teachers_eval, student_after /
eval_after (`student_*`: the task accuracy; `eval_*`: every eval/ metric).
"""

from __future__ import annotations

import os

from absl import logging
import jax

from gkd_jax import workdir as workdir_lib

FILE = "summary.json"


def _read(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  try:
    summary = workdir_lib.read_json(path)
  except ValueError as e:
    logging.warning("%s; starting a new summary", e)
    return {}
  return summary if isinstance(summary, dict) else {}


class Summary:
  """The fields of summary.json (`data`), read at the start of a run and written after each part."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, FILE)
    self.data = _read(self.path)

  def record_before(self, before: dict, teacher_metrics: dict) -> None:
    """The init's evaluation (`evaluation.evaluate`) and the teachers' (`teacher_metrics`); writes."""
    self.data["student_before"] = before.get("eval/accuracy")
    self.data["eval_before"] = before
    self.data.update(teacher_metrics)
    self.write()

  def record_after(self, final: dict) -> None:
    """The final evaluation (written by `write`, after the export)."""
    self.data["student_after"] = final.get("eval/accuracy")
    self.data["eval_after"] = final

  def write(self) -> None:
    """summary.json, whole (process 0 only)."""
    if jax.process_index() == 0:
      workdir_lib.write_json(self.path, self.data)
