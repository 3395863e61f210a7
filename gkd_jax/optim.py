"""The optimizer of a run: `OptimConfig` (typed, from `config.optim`) and its optax transformation.

  tx = OptimConfig.read(config.optim).build(num_steps)  # a run: run.config.optim.build(...)

Warmup is linear from 0 to the peak learning rate, then `schedule` decays over the remaining
updates; gradient accumulation is `optax.MultiSteps` (the schedule counts updates, not micro-steps).
"""

from __future__ import annotations

import dataclasses

import optax

from gkd_jax import fields

NAMES = ("adamw", "adafactor", "sgd")
SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class OptimConfig(fields.Group):
  """The `optim` group of a run config (configs/default.py documents each field)."""

  GROUP = "optim"
  name: str = fields.field("adamw", fields.choice(*NAMES))
  learning_rate: float = fields.field(1e-5, fields.number(0, lo_open=True))
  schedule: str = fields.field("cosine", fields.choice(*SCHEDULES))
  warmup_steps: int = fields.field(0, fields.integer(0))
  weight_decay: float = fields.field(0.0, fields.number(0))
  b1: float = fields.field(0.9, fields.number(0, 1, hi_open=True))
  b2: float = fields.field(0.999, fields.number(0, 1, hi_open=True))
  grad_clip: float = fields.field(1.0, fields.number(0))  # 0 = off
  grad_accum_steps: int = fields.field(1, fields.integer(1))

  def build(self, num_steps: int) -> optax.GradientTransformation:
    accum = int(self.grad_accum_steps)
    num_updates = max(1, num_steps // accum)
    warmup = min(int(self.warmup_steps), num_updates - 1) if num_updates > 1 else 0
    lr = float(self.learning_rate)
    decay_steps = max(1, num_updates - warmup)
    decay = {
        "constant": lambda: optax.constant_schedule(lr),
        "cosine": lambda: optax.cosine_decay_schedule(lr, decay_steps),
        "linear": lambda: optax.linear_schedule(lr, 0.0, decay_steps),
    }[self.schedule]()
    schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])
    if self.name == "adamw":
      tx = optax.adamw(schedule, b1=self.b1, b2=self.b2, weight_decay=self.weight_decay)
    elif self.name == "adafactor":
      tx = optax.adafactor(schedule, weight_decay_rate=self.weight_decay or None)
    else:
      tx = optax.sgd(schedule, momentum=self.b1 or None)
    if self.grad_clip:
      tx = optax.chain(optax.clip_by_global_norm(self.grad_clip), tx)
    if accum > 1:
      tx = optax.MultiSteps(tx, every_k_schedule=accum)
    return tx
