"""Teacher sources: which program serves a batch, and every program sees the configured λ (the host's
coin for a teacher cache beside a live teacher is `GKDSettings.coin`, the coin the step would draw).
"""

import dataclasses
import types

import jax
import numpy as np

from gkd_jax import gkd, teacher_sources
from gkd_jax.teacher_sources import Cached, Live, NoTeacher, Routed, Teacher


def _teacher(name, weight=1.0):
  return Teacher(name, model=object(), params={"w": np.ones(2)}, weight=weight)


def test_cached_beside_a_live_teacher_routes_by_the_steps_own_coins():
  settings = gkd.GKDSettings(lmbda=0.5, divergence_weight=2.0)
  coins = gkd.batch_coins(seed=3, lmbda=0.5, num_steps=40)
  cache = types.SimpleNamespace(metadata={"k": 4})
  source = Cached(cache, _teacher(""), coins)
  on, off = source.variants(settings)
  assert on.teacher is source.live and off.teacher is None
  assert on.settings.lmbda == off.settings.lmbda == 0.5  # the configured λ, in both programs
  assert (on.settings.coin, off.settings.coin) == (True, False)
  assert [source.train_variant(s, {}) for s in range(40)] == [0 if c else 1 for c in coins]
  assert 0 < coins.sum() < 40
  # The coins are the ones train_step draws from fold_in(key(seed), step).
  key = jax.random.key(3)
  assert [bool(gkd.batch_coin(jax.random.fold_in(key, s), 0.5)) for s in range(40)] == list(coins)
  fields = source.batch_fields(8, 5, None)
  assert fields["teacher_topk_ids"].shape == (8, 5, 4)


def test_routed_teachers_each_get_their_weight_and_the_batch_names_its_teacher():
  settings = gkd.GKDSettings(divergence_weight=2.0)
  source = Routed((_teacher("a", 1.0), _teacher("b", 0.25)))
  variants = source.variants(settings)
  assert [v.settings.divergence_weight for v in variants] == [2.0, 0.5]
  batch = {"teacher_index": np.array([1, 1]), "prompt_tokens": np.zeros((2, 3))}
  assert source.train_variant(7, batch) == 1 and "teacher_index" not in batch


def test_one_teacher_and_none():
  settings = gkd.GKDSettings(divergence_weight=2.0)
  (v,) = Live(_teacher("", 0.5)).variants(settings)
  assert v.settings.divergence_weight == 1.0 and v.settings.coin is None
  (v,) = NoTeacher().variants(settings)
  assert v.teacher is None and v.settings is settings
  assert NoTeacher().batch_fields(8, 5, None) == {} and NoTeacher().row_extras is None
  assert teacher_sources.weighted(settings, 1.0) is settings


def test_a_host_coin_decides_the_completions_the_step_would_otherwise_draw():
  """coin=False: dataset completions, no sampling; coin=True: the student's samples."""
  from gkd_jax import testing  # pylint: disable=import-outside-toplevel

  model, params = testing.tiny_llama(seed=0)
  r = np.random.default_rng(0)
  batch = {
      "prompt_tokens": r.integers(1, 30, (2, 4)).astype(np.int32),
      "prompt_mask": np.ones((2, 4), np.int32),
      "completion_tokens": r.integers(1, 30, (2, 3)).astype(np.int32),
      "completion_mask": np.ones((2, 3), np.int32),
  }
  s = gkd.GKDSettings(lmbda=0.5, sample_max_new_tokens=3, eos_id=0)
  rng = jax.random.key(1)
  off = gkd.choose_completions(
      model, params, None, None, batch, rng, dataclasses.replace(s, coin=False)
  )
  on = gkd.choose_completions(
      model, params, None, None, batch, rng, dataclasses.replace(s, coin=True)
  )
  np.testing.assert_array_equal(off[0], batch["completion_tokens"])
  assert float(off[2].sum()) == 0 and float(on[2].sum()) == 2
  assert not gkd.sampler_matches_loss(dataclasses.replace(s, coin=False))
  assert gkd.sampler_matches_loss(dataclasses.replace(s, coin=True))
