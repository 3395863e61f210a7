"""Where a run's teacher comes from: one source per mode.

  NoTeacher  no teacher configured (SFT): nothing is loaded or scored.
  Live       one teacher in memory (`teacher`, or the one entry of `teachers`).
  Routed     several teachers (`teachers`): each batch holds one teacher's records
             (batch["teacher_index"]) and runs that teacher's own compiled step.
  Cached     `gkd.teacher_cache`: the teacher's top-k on the dataset completions, read with the
             batches. With λ=0 no teacher is in memory; with 0 < λ < 1 (mixing="batch") a live
             teacher serves the on-policy steps and the cache the off-policy ones.

A source owns its loading (`load` picks and builds it: the one place that branches on the mode),
the compiled programs it needs (`variants`: which teacher scores a step, with which settings, where
the host draws the step's on-policy coin, `GKDSettings.coin`), which of them serves a batch
(`train_variant`, `eval_variant`), and the extra per-row fields of its batches (`row_extras`,
`batch_fields`). The algorithm (gkd.py) sees the configured λ in every program.

A new mode is a new class here with these members, and a branch in `load`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gkd_jax import gkd, loading, teacher_cache
from gkd_jax.run_config import RunConfig


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A teacher in memory."""

  name: str  # its `teachers` entry ("" for `teacher`)
  model: Any
  params: Any
  weight: float = 1.0  # multiplies gkd.divergence_weight on its rows


@dataclasses.dataclass(frozen=True)
class Variant:
  """One compiled train/eval program pair: which teacher scores its steps, and how."""

  teacher: Optional[Teacher]  # None: no teacher in memory (SFT; a teacher cache's steps)
  settings: gkd.GKDSettings


def weighted(settings: gkd.GKDSettings, weight: float) -> gkd.GKDSettings:
  """The settings with gkd.divergence_weight scaled by a teacher's weight."""
  if weight == 1.0:
    return settings
  return dataclasses.replace(settings, divergence_weight=settings.divergence_weight * weight)


class _Source:
  """What every source shares: one program, no extra batch fields."""

  live: Optional[Teacher] = None  # the one teacher in memory, if there is exactly one
  routed: tuple = ()  # several teachers in memory, in batch["teacher_index"] order

  def variants(self, settings: gkd.GKDSettings) -> tuple:
    return (Variant(self.live, weighted(settings, self.live.weight) if self.live else settings),)

  def train_variant(self, step: int, local_batch: dict) -> int:  # pylint: disable=unused-argument
    return 0

  def eval_variant(self, local_batch: dict) -> int:  # pylint: disable=unused-argument
    return 0

  row_extras = None  # the loader's per-row fields (data.make_dataset's row_extras)

  def batch_fields(self, batch_size: int, completion_len: int, sh) -> dict:  # pylint: disable=unused-argument
    """ShapeDtypeStructs of the extra fields of a global batch."""
    return {}


class NoTeacher(_Source):
  pass


class Live(_Source):

  def __init__(self, teacher: Teacher):
    self.live = teacher


class Routed(_Source):

  def __init__(self, teachers: tuple):
    self.routed = teachers

  def variants(self, settings):
    return tuple(Variant(t, weighted(settings, t.weight)) for t in self.routed)

  def train_variant(self, step, local_batch):
    return int(local_batch.pop("teacher_index")[0])  # one teacher per global batch

  def eval_variant(self, local_batch):
    return int(local_batch.pop("teacher_index")[0])


class Cached(_Source):
  """The teacher cache; `live` serves the on-policy steps of 0 < λ < 1, whose coins (the ones
  `gkd.train_step` would draw, `gkd.batch_coins`) the host draws once for all steps."""

  def __init__(self, cache, live: Optional[Teacher], coins: Optional[np.ndarray]):
    self.cache, self.live, self.coins = cache, live, coins
    self.row_extras = functools.partial(teacher_cache.stack_rows, cache)

  def variants(self, settings):
    if self.live is None:
      return (Variant(None, settings),)
    on, off = (dataclasses.replace(settings, coin=c) for c in (True, False))
    return (Variant(self.live, on), Variant(None, off))

  def train_variant(self, step, local_batch):
    return 0 if self.live is None or self.coins[step] else 1

  def batch_fields(self, batch_size, completion_len, sh):
    bck = (batch_size, completion_len, self.cache.metadata["k"])
    return dict(
        teacher_topk_ids=jax.ShapeDtypeStruct(bck, jnp.int32, sharding=sh),
        teacher_topk_logprobs=jax.ShapeDtypeStruct(bck, jnp.float32, sharding=sh),
        cached_completion_tokens=jax.ShapeDtypeStruct(bck[:2], jnp.int32, sharding=sh),
    )


def load(cfg: RunConfig, mode: str, tokenizer, student, mesh, rules) -> _Source:
  """The run's teacher source, loaded onto the mesh (a teacher cache checked against the run)."""
  g = cfg.gkd
  cache = None
  if g.teacher_cache and mode == "train":
    cache = teacher_cache.TeacherCache(g.teacher_cache)
  teachers = ()
  if mode != "sample" and not (cache is not None and g.lmbda == 0):
    specs = dict(cfg.teachers) or ({"": cfg.teacher} if cfg.teacher.path else {})
    teachers = tuple(
        Teacher(name, *loading.load_teacher(spec, tokenizer, student, mesh, rules), spec.weight)
        for name, spec in specs.items()
    )
  if cache is not None:  # made for this data, tokenizer, teacher, k and temperature?
    teacher_cache.check_compatible(
        cache.metadata,
        teacher_cache.run_metadata(cfg, tokenizer),
        where=f"gkd.teacher_cache={g.teacher_cache}",
    )
    live = _one(teachers)
    coins = None if live is None else gkd.batch_coins(cfg.seed, g.lmbda, cfg.train.num_steps)
    return Cached(cache, live, coins)
  if len(teachers) > 1:
    return Routed(teachers)
  return Live(_one(teachers)) if teachers else NoTeacher()


def _one(teachers: tuple) -> Optional[Teacher]:
  """The only teacher, unnamed: names label a routed run's per-teacher metrics, one has none."""
  return dataclasses.replace(teachers[0], name="") if teachers else None
