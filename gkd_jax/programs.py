"""The jitted programs of a run (train_step, eval_step, init) on its mesh, and which one a batch
goes to: several teachers each get their own compiled step, and a teacher cache with 0 < λ < 1
sends the off-policy steps to a step without the teacher.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gkd_jax import gkd, sharding
from gkd_jax import optim as optim_lib
from gkd_jax import remat as remat_lib


@dataclasses.dataclass
class Steps:
  """The jitted functions of a run, with explicit shardings on its mesh."""

  init_state: Any  # params -> TrainState
  abstract_state: Any  # TrainState of ShapeDtypeStructs with shardings (checkpoint restore target)
  train_step: Any  # (state, teacher_params, batch, rng) -> (state, metrics); state donated
  eval_step: Any  # (params, teacher_params, batch) -> metrics
  remat: bool = False  # whether train_step recomputes student layers (train.remat, "auto" resolved)
  # Several teachers: (train_step, eval_step) of each of run.teachers, in their order.
  routed: tuple = ()
  # A teacher cache with 0 < λ < 1: the λ=0 step on the cached top-k, for the off-policy steps
  # (then train_step is the λ=1 step with the live teacher, for the on-policy ones), and which
  # steps are on-policy: bool [train.num_steps], the coins of `gkd.batch_coin`.
  off_policy_step: Any = None
  on_policy_steps: Any = None


def compile_steps(run) -> Steps:
  """The programs of a `train.Run`, with explicit shardings on its mesh."""
  c = run.config
  optimizer = optim_lib.OptimConfig.from_config(c.optim).build(c.train.num_steps)

  def init_state(params):
    return gkd.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        nonfinite_steps=jnp.zeros((), jnp.int32),
    )

  abstract = jax.eval_shape(init_state, run.params)
  repl = sharding.replicated(run.mesh)
  state_sh = gkd.TrainState(
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
  )  # e.g. adafactor's factored rows: replicated
  batch_sh = sharding.batch_sharding(run.mesh, tuple(c.sharding_rules), 2)
  abstract_state = jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, state_sh
  )

  def make_train_step(teacher, teacher_params, settings):
    """(remat, jitted train_step) for one teacher (None: from the cache) and settings."""
    teacher_sh = None if teacher is None else jax.tree.map(lambda x: x.sharding, teacher_params)

    def make(remat: bool):
      return jax.jit(
          functools.partial(
              gkd.train_step,
              student=run.student,
              teacher=teacher,
              optimizer=optimizer,
              settings=dataclasses.replace(settings, remat=remat),
          ),
          in_shardings=(state_sh, teacher_sh, batch_sh, repl),
          out_shardings=(state_sh, repl),
          donate_argnums=0,
      )

    if c.train.remat != "auto":
      return bool(c.train.remat), make(bool(c.train.remat))
    key = jax.eval_shape(lambda: jax.random.key(0))
    args = (
        abstract_state,
        teacher_params,
        abstract_batch(run, c.train.batch_size),
        jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=repl),
    )
    remat, fn = remat_lib.choose(make, args, run.mesh.devices.flat[0])
    logging.info("train.remat='auto' chose remat=%s", remat)
    return remat, fn

  def make_eval_step(teacher, teacher_params):
    teacher_sh = None if teacher is None else jax.tree.map(lambda x: x.sharding, teacher_params)
    return jax.jit(
        functools.partial(
            gkd.eval_step, student=run.student, teacher=teacher, settings=run.settings
        ),
        in_shardings=(run.param_shardings, teacher_sh, batch_sh),
        out_shardings=repl,
    )

  settings, off_policy_step, on_policy_steps = run.settings, None, None
  if run.teacher_cache is not None and 0 < settings.lmbda < 1:  # mixing="batch" (validated)
    _, off_policy_step = make_train_step(None, None, dataclasses.replace(settings, lmbda=0.0))
    on_policy_steps = _coins(c.seed, settings.lmbda, c.train.num_steps)
    settings = dataclasses.replace(settings, lmbda=1.0)
  if run.teachers:
    trains = [
        make_train_step(t.model, t.params, weighted(settings, t.weight)) for t in run.teachers
    ]
    routed = tuple(
        (fn, make_eval_step(t.model, t.params)) for (_, fn), t in zip(trains, run.teachers)
    )
    (remat, train_step), eval_step = trains[0], routed[0][1]
  else:
    routed = ()
    remat, train_step = make_train_step(run.teacher, run.teacher_params, settings)
    eval_step = make_eval_step(run.teacher, run.teacher_params)
  return Steps(
      jax.jit(init_state, out_shardings=state_sh),
      abstract_state,
      train_step,
      eval_step,
      remat,
      routed,
      off_policy_step,
      on_policy_steps,
  )


def _coins(seed: int, lmbda: float, num_steps: int) -> np.ndarray:
  """bool [num_steps]: whether each step of a mixing="batch" run is on-policy, the coin its
  train_step would draw (all at once: no host round trip per step)."""
  key = jax.random.key(seed)
  draw = jax.vmap(lambda step: gkd.batch_coin(jax.random.fold_in(key, step), lmbda))
  return np.asarray(jax.jit(draw)(jnp.arange(num_steps)))


def weighted(settings: gkd.GKDSettings, weight: float) -> gkd.GKDSettings:
  """The settings with gkd.divergence_weight scaled by a teacher's weight."""
  return dataclasses.replace(settings, divergence_weight=settings.divergence_weight * weight)


def step_program(run, steps: Steps, step: int, local_batch: dict):
  """(jitted train_step, its teacher params, teacher name or None) for this step's batch; pops the
  batch's `teacher_index` (several teachers: the batch's teacher). With a teacher cache and
  0 < λ < 1, the step's coin (the one the mixed step would draw) sends off-policy steps to the
  cache, without the teacher."""
  if run.teachers:
    t = int(local_batch.pop("teacher_index")[0])  # one teacher per global batch
    return steps.routed[t][0], run.teachers[t].params, run.teachers[t].name
  if steps.off_policy_step is not None and not steps.on_policy_steps[step]:
    return steps.off_policy_step, None, None
  return steps.train_step, run.teacher_params, None


def eval_program(run, steps: Steps, local_batch: dict):
  """(jitted eval_step, its teacher params, teacher name or None) for a held-out batch."""
  if run.teachers:
    t = int(local_batch.pop("teacher_index")[0])
    return steps.routed[t][1], run.teachers[t].params, run.teachers[t].name
  return steps.eval_step, run.teacher_params, None


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
  if run.teacher_cache is not None:
    bck = (batch_size, c.max_completion_len, run.teacher_cache.metadata["k"])
    out.update(
        teacher_topk_ids=jax.ShapeDtypeStruct(bck, jnp.int32, sharding=sh),
        teacher_topk_logprobs=jax.ShapeDtypeStruct(bck, jnp.float32, sharding=sh),
        cached_completion_tokens=out["completion_tokens"],
    )
  return out
