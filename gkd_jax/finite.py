"""The finiteness guard of the training loop.

`gkd.train_step` never applies a step whose loss, gradient or new parameters are not all finite: the
state keeps its old parameters and optimizer state, `metrics["nonfinite"]` is 1 and
`state.nonfinite_steps` counts such steps (it is checkpointed, so the count survives a resume). So no
checkpoint or export ever holds a non-finite value. This guard turns the flags into a decision on
the host without a device sync per step: the trainer calls `add` every step and `check` where it
syncs anyway (logging, checkpointing, the end).

  guard = NonFiniteGuard(max_bad=config.train.max_nonfinite_steps, count=int(state.nonfinite_steps))
  guard.add(step, metrics); ...; guard.check()   # raises NonFiniteError past the allowance

With max_bad=0 (the default) the first bad step stops the run; with max_bad=N up to N bad steps in
the whole run are skipped (each reported in one line) and the next one stops it.
"""

from __future__ import annotations

from absl import logging
import jax


class NonFiniteError(RuntimeError):
  """Training produced a non-finite loss, gradient or parameter."""


class NonFiniteGuard:
  """Collects the per-step flags and stops the run past `max_bad` bad steps."""

  def __init__(self, max_bad: int = 0, count: int = 0):
    self.max_bad, self.count = int(max_bad), int(count)
    self._pending = []

  def add(self, step: int, metrics: dict) -> None:
    self._pending.append((step, {k: metrics[k] for k in ("nonfinite", "loss", "grad_norm")}))

  def check(self) -> None:
    pending, self._pending = jax.device_get(self._pending), []
    for step, m in pending:
      if not m["nonfinite"]:
        continue
      self.count += 1
      what = f"loss={float(m['loss']):.4g}, grad_norm={float(m['grad_norm']):.4g}"
      if self.count > self.max_bad:
        allowed = (
            f"{self.count - 1} earlier bad step(s) were skipped, "
            f"train.max_nonfinite_steps={self.max_bad}"
            if self.max_bad
            else "set train.max_nonfinite_steps=N to skip up to N such steps"
        )
        raise NonFiniteError(
            f"step {step}: non-finite loss, gradient or parameters ({what}); stopped without "
            f"applying it (no checkpoint holds it; {allowed}); lower optim.learning_rate or set "
            "optim.grad_clip"
        )
      logging.warning(
          "step %d: non-finite loss, gradient or parameters (%s); update skipped "
          "(%d of train.max_nonfinite_steps=%d)",
          step,
          what,
          self.count,
          self.max_bad,
      )
