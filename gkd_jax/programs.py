"""The jitted programs of a run (train_step, eval_step, init) on its mesh: one train/eval pair per
variant of the run's teacher source (teacher_sources), which also says which one a batch goes to.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import optax

from gkd_jax import gkd, sharding
from gkd_jax import remat as remat_lib


@dataclasses.dataclass
class Steps:
  """The jitted functions of a run, with explicit shardings on its mesh."""

  init_state: Any  # params -> TrainState
  abstract_state: Any  # TrainState of ShapeDtypeStructs with shardings (checkpoint restore target)
  train_step: Any  # (state, teacher_params, batch, rng) -> (state, metrics); state donated
  eval_step: Any  # (params, teacher_params, batch) -> metrics
  # What train_step's student layers keep for the backward pass (train.remat, "auto" resolved):
  # True/False, or a gkd_jax/remat.py policy name.
  remat: bool | str = False
  # The teacher source's variants (teacher_sources.Variant) and their (train_step, eval_step), in
  # the same order; train_step and eval_step above are the first's. The source routes each batch.
  variants: tuple = ()
  programs: tuple = ()


def compile_steps(run) -> Steps:
  """The programs of a `train.Run`, with explicit shardings on its mesh: one train/eval pair per
  variant of its teacher source."""
  c = run.config
  optimizer = c.optim.build(c.train.num_steps)

  def init_state(params):
    return gkd.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        nonfinite_steps=jnp.zeros((), jnp.int32),
    )

  abstract = jax.eval_shape(init_state, run.params)
  state_sh = _state_shardings(run, optimizer, abstract)
  abstract_state = jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, state_sh
  )
  variants = run.source.variants(run.settings)
  trains = [_train_step(run, v, optimizer, state_sh, abstract_state) for v in variants]
  programs = tuple((fn, _eval_step(run, v)) for (_, fn), v in zip(trains, variants))
  return Steps(
      jax.jit(init_state, out_shardings=state_sh),
      abstract_state,
      programs[0][0],
      programs[0][1],
      trains[0][0],
      variants,
      programs,
  )


def _state_shardings(run, optimizer, abstract) -> gkd.TrainState:
  """The TrainState's shardings: the optimizer's parameter-shaped leaves as their parameter, the
  rest (counters; e.g. adafactor's factored rows) replicated."""
  repl = sharding.replicated(run.mesh)
  return gkd.TrainState(
      step=repl,
      params=run.param_shardings,
      nonfinite_steps=repl,
      opt_state=optax.tree_map_params(
          optimizer,
          lambda leaf, p, sh: sh if leaf.shape == p.shape else repl,
          abstract.opt_state,
          abstract.params,
          run.param_shardings,
          transform_non_params=lambda _: repl,
      ),
  )


def _train_step(run, variant, optimizer, state_sh, abstract_state):
  """(remat, jitted train_step) of one of the teacher source's variants; train.remat="auto" picks
  remat by the compiled step's memory (gkd_jax.remat)."""
  teacher, teacher_params, teacher_sh = _teacher_args(variant)
  repl = sharding.replicated(run.mesh)
  batch_sh = sharding.batch_sharding(run.mesh, tuple(run.config.sharding_rules), 2)

  def make(remat):
    return jax.jit(
        functools.partial(
            gkd.train_step,
            student=run.student,
            teacher=teacher,
            optimizer=optimizer,
            settings=dataclasses.replace(variant.settings, remat=remat),
        ),
        in_shardings=(state_sh, teacher_sh, batch_sh, repl),
        out_shardings=(state_sh, repl),
        donate_argnums=0,
    )

  setting = run.config.train.remat
  if setting != "auto":
    remat_lib.check_platform(setting, run.mesh.devices.flat[0].platform)
    return setting, make(setting)
  key = jax.eval_shape(lambda: jax.random.key(0))
  args = (
      abstract_state,
      teacher_params,
      abstract_batch(run, run.config.train.batch_size),
      jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=repl),
  )
  remat, fn = remat_lib.choose(make, args, run.mesh.devices.flat[0])
  logging.info("train.remat='auto' chose remat=%s", remat)
  return remat, fn


def _eval_step(run, variant):
  teacher, _, teacher_sh = _teacher_args(variant)
  batch_sh = sharding.batch_sharding(run.mesh, tuple(run.config.sharding_rules), 2)
  return jax.jit(
      functools.partial(
          gkd.eval_step, student=run.student, teacher=teacher, settings=variant.settings
      ),
      in_shardings=(run.param_shardings, teacher_sh, batch_sh),
      out_shardings=sharding.replicated(run.mesh),
  )


def _teacher_args(variant):
  """(teacher model, its params, their shardings) of a variant; Nones without a teacher."""
  t = variant.teacher
  if t is None:
    return None, None, None
  return t.model, t.params, jax.tree.map(lambda x: x.sharding, t.params)


def _program(steps: Steps, i: int, kind: int):
  """(jitted step, its teacher params, teacher name or None) of variant i (kind 0 train, 1 eval)."""
  t = steps.variants[i].teacher
  return steps.programs[i][kind], None if t is None else t.params, t.name if t and t.name else None


def step_program(run, steps: Steps, step: int, local_batch: dict):
  """(jitted train_step, its teacher params, teacher name or None) for this step's batch, as the
  run's teacher source routes it (which may pop fields of the batch, e.g. `teacher_index`)."""
  return _program(steps, run.source.train_variant(step, local_batch), 0)


def eval_program(run, steps: Steps, local_batch: dict):
  """(jitted eval_step, its teacher params, teacher name or None) for a held-out batch."""
  return _program(steps, run.source.eval_variant(local_batch), 1)


def abstract_batch(run, batch_size: int) -> dict:
  """ShapeDtypeStructs (with shardings) of a global batch of `batch_size` examples."""
  c = run.config.data
  sh = sharding.batch_sharding(run.mesh, tuple(run.config.sharding_rules), 2)
  shapes = {
      "prompt": (batch_size, c.max_prompt_len),
      "completion": (batch_size, c.max_completion_len),
  }
  out = {
      f"{part}_{kind}": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sh)
      for part, shape in shapes.items()
      for kind in ("tokens", "mask")
  }
  out.update(run.source.batch_fields(batch_size, c.max_completion_len, sh))
  return out
