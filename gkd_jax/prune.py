"""Depth pruning of a decoder: drop whole layers, then recover the pruned model by distillation.

    model, params, info = prune(model, params, num_keep=12, calibration=(tokens_BxT, mask_BxT))
    importance_L = block_importance(model, params, tokens_BxT, mask_BxT)   # Minitron / ShortGPT BI
    keep = choose_layers(model, 12, "importance", importance_L)          # or rule="even"
    model, params = keep_layers(model, params, keep)

The recipe is Minitron's (Muralidharan et al., 2024) and Llama 3.2 1B/3B's: prune a released model
by depth, then distill the pruned student from the unpruned teacher. A kept layer keeps its own
weights *and* its own attention type (Gemma's sliding vs global), so a pruned model computes
exactly what the original computes when the dropped layers are identities.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gkd_jax.models import rope
from gkd_jax.models import api
from gkd_jax.models.api import Model, Params
from gkd_jax.models.config import FULL
from gkd_jax.scoring import attention_masks, positions_from_mask

RULES = ("importance", "even")


def keep_layers(model: Model, params: Params, keep: Sequence[int]) -> tuple[Model, Params]:
  """(model, params) with only the layers `keep` (ascending original indices), renumbered 0..K-1.

  The new ModelConfig has num_layers=K and `layer_types` taken from the kept layers, so a layer's
  attention type (and with it its rope base, rope scaling and sliding mask) travels with its
  weights. Embeddings, final norm and head are unchanged. The kept layers' arrays are shared, not
  copied (jax arrays are immutable); the dict containers are new. Stacked params (a
  `scan_layers` model) keep their form: the kept rows of each [L,...] leaf, gathered into new
  [K,...] arrays. ValueError, naming every
  problem, when `keep` is empty, unsorted, repeats an index or leaves [0, num_layers).
  """
  num_layers = model.config.num_layers
  keep = list(keep)
  problems = []
  if not keep:
    problems.append("keeps no layer")
  if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in keep):
    problems.append(f"has non-integer entries {keep}")
  else:
    if len(set(keep)) != len(keep):
      problems.append(f"repeats indices {sorted({i for i in keep if keep.count(i) > 1})}")
    if keep != sorted(keep):
      problems.append(f"is not sorted ascending: {keep}")
    outside = [i for i in keep if not 0 <= i < num_layers]
    if outside:
      problems.append(f"has indices {outside} outside [0, {num_layers})")
  if problems:
    raise ValueError("keep_layers: keep " + "; ".join(problems))
  keep = [int(i) for i in keep]
  config = model.config.replace(
      num_layers=len(keep), layer_types=tuple(model.config.layer_types[i] for i in keep)
  )
  new_params = {name: value for name, value in params.items() if name != "layers"}
  if api.is_stacked(params):
    rows = np.asarray(keep)
    new_params["layers"] = jax.tree.map(lambda x: x[rows], params["layers"])
  else:
    new_params["layers"] = {
        new: jax.tree.map(lambda x: x, params["layers"][old]) for new, old in enumerate(keep)
    }
  return dataclasses.replace(model, config=config), new_params


@functools.partial(jax.jit, static_argnames="model")
def _cosine_sums(model: Model, params: Params, tokens_BxT, mask_BxT):
  """Per layer i, the sum over valid tokens of cos(x_i, x_{i+1}) [L] float32, and their count.

  Runs the blocks as `Decoder.__call__` does (embed, per-type rope and mask, each block in turn),
  keeping only running sums so memory stays at one layer's activations.
  """
  cfg = model.config
  decoder = model.bind(params)
  valid_BxT = mask_BxT.astype(bool)
  x_BxTxD = decoder.embed_tokens(tokens_BxT)
  positions_BxT = positions_from_mask(mask_BxT)
  masks = attention_masks(model, mask_BxT)
  rot = {
      sliding: rope.cos_sin(rope.inv_freq(cfg, sliding), positions_BxT, x_BxTxD.dtype)
      for sliding in sorted(set(cfg.is_sliding))
  }
  sums = []
  for i, layer in enumerate(decoder.layers):
    sliding = cfg.is_sliding[i]
    cos, sin = rot[sliding]
    y_BxTxD, _ = layer(x_BxTxD, cos, sin, masks[sliding])
    cos_BxT = _cosine(x_BxTxD, y_BxTxD)
    sums.append(jnp.sum(jnp.where(valid_BxT, cos_BxT, 0.0)))
    x_BxTxD = y_BxTxD
  return jnp.stack(sums), jnp.sum(valid_BxT)


def _cosine(a_BxTxD, b_BxTxD):
  """Cosine similarity over the last axis in float32 (0 where either vector is zero)."""
  a = a_BxTxD.astype(jnp.float32)
  b = b_BxTxD.astype(jnp.float32)
  norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
  return jnp.sum(a * b, axis=-1) / jnp.maximum(norms, jnp.finfo(jnp.float32).tiny)


def block_importance(
    model: Model,
    params: Params,
    tokens_BxT,
    mask_BxT=None,
    batch_size: Optional[int] = None,
) -> np.ndarray:
  """Minitron's block importance per layer, float64 [L]: BI_i = 1 - E[cos(x_i, x_{i+1})].

  x_i is the residual stream entering layer i and x_{i+1} the one leaving it (before the final
  norm); the expectation is over every valid (mask=1) token of the calibration batch, pooled. A
  layer that barely turns the residual stream (BI near 0) changes little downstream when dropped
  (ShortGPT, Men et al. 2024; Minitron). `batch_size` scores the rows that many at a time
  (same result) to bound activation memory on large calibration sets. ValueError when tokens and
  mask are not equal [B,T] shapes, the mask has no valid token or batch_size < 1.
  """
  if model.scan_layers:  # measured on the looped form: one layer at a time (a per-layer copy)
    model = dataclasses.replace(model, scan_layers=False)
    params = api.unstack_layers(params)
  tokens_BxT = np.asarray(tokens_BxT)
  mask_BxT = np.ones(tokens_BxT.shape, np.int32) if mask_BxT is None else np.asarray(mask_BxT)
  if tokens_BxT.ndim != 2 or mask_BxT.shape != tokens_BxT.shape:
    raise ValueError(
        f"block_importance: tokens {tokens_BxT.shape} and mask {mask_BxT.shape} must be equal "
        "[B,T] shapes"
    )
  if not mask_BxT.any():
    raise ValueError("block_importance: the calibration mask has no valid token")
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"block_importance: batch_size={batch_size} must be >= 1")
  B = tokens_BxT.shape[0]
  step = min(batch_size or B, B)
  pad = -B % step  # all-padding rows: every chunk has one shape (one compile), adds nothing
  tokens_BxT = np.pad(tokens_BxT, ((0, pad), (0, 0)))
  mask_BxT = np.pad(mask_BxT, ((0, pad), (0, 0)))
  sums_L = np.zeros(model.config.num_layers)
  count = 0
  for start in range(0, B + pad, step):
    rows = slice(start, start + step)
    sums, n = _cosine_sums(model, params, tokens_BxT[rows], mask_BxT[rows])
    sums_L += np.asarray(sums, np.float64)
    count += int(n)
  return 1.0 - sums_L / count


def must_keep(model: Model) -> list[int]:
  """Layers every pruning keeps: the first and the last, and, in a model with more than one
  attention type (Gemma 2/3), every global (full-attention) layer.

  Global layers are Gemma's only path for information beyond the sliding window; a Gemma 3 pruned
  of its global layers emits garbage (measured), and no importance score on short calibration text
  sees what they carry, so they are not candidates. The first layer reads raw embeddings and the
  last feeds the head: both differ in kind from the middle layers, and Minitron and ShortGPT both
  measure them among the most important.
  """
  cfg = model.config
  keep = {0, cfg.num_layers - 1}
  if len(set(cfg.layer_types)) > 1:
    keep |= {i for i, t in enumerate(cfg.layer_types) if t == FULL}
  return sorted(keep)


def _evenly_spaced(forced: Sequence[int], budget: int) -> list[int]:
  """`budget` layers between the sorted `forced` ones, spread evenly over depth.

  Each gap between consecutive forced layers gets a share of the budget proportional to its free
  layers (largest remainder, ties to the shallower gap), placed at round(linspace) inside it. With
  forced = first and last only, that is round(linspace(0, L-1, K)) itself.
  """
  gaps = [(a, b) for a, b in zip(forced[:-1], forced[1:]) if b - a > 1]
  free = np.array([b - a - 1 for a, b in gaps], np.float64)
  quota = budget * free / free.sum()
  share = np.floor(quota).astype(int)
  for g in sorted(range(len(gaps)), key=lambda g: (-(quota[g] - share[g]), g)):
    if share.sum() == budget:
      break
    share[g] += 1
  chosen = []
  for (a, b), m in zip(gaps, share):
    chosen += [int(np.floor(x + 0.5)) for x in np.linspace(a, b, m + 2)[1:-1]]
  return chosen


def choose_layers(
    model: Model, num_keep: int, rule: str = "importance", importance=None
) -> list[int]:
  """The `num_keep` layers (ascending) to keep: `must_keep(model)`, then the budget left over
  goes to the other layers by `rule`.

  "importance": the candidates with the highest `importance` (block importance, [L]; ties go to
  the shallower layer). "even": candidates evenly spaced over depth (K of L layers of one type:
  round(linspace(0, L-1, K)); see `_evenly_spaced` for the gaps between global layers).
  ValueError when num_keep is below len(must_keep) or above num_layers, for an unknown rule, or
  when rule="importance" lacks an [L] importance.
  """
  num_layers = model.config.num_layers
  forced = must_keep(model)
  problems = []
  if isinstance(num_keep, bool) or not isinstance(num_keep, (int, np.integer)):
    problems.append(f"num_keep={num_keep!r} must be an int")
  elif not len(forced) <= num_keep <= num_layers:
    problems.append(
        f"num_keep={num_keep} must be in [{len(forced)}, {num_layers}]: layers {forced} are "
        "always kept (first, last, and every global layer of a mixed sliding/global model)"
    )
  if rule not in RULES:
    problems.append(f"rule={rule!r} must be one of {RULES}")
  if rule == "importance":
    if importance is None:
      problems.append('rule="importance" needs importance (block_importance of the model)')
    elif np.shape(importance) != (num_layers,):
      problems.append(f"importance has shape {np.shape(importance)}, need ({num_layers},)")
  if problems:
    raise ValueError("choose_layers: " + "; ".join(problems))
  candidates = [i for i in range(num_layers) if i not in forced]
  budget = int(num_keep) - len(forced)
  if budget == 0:
    chosen = []
  elif rule == "even":
    chosen = _evenly_spaced(forced, budget)
  else:
    scores = np.asarray(importance, np.float64)
    chosen = sorted(candidates, key=lambda i: (-scores[i], i))[:budget]
  return sorted(forced + chosen)


def prune(
    model: Model,
    params: Params,
    num_keep: int,
    rule: str = "importance",
    calibration: Optional[tuple[Any, Any]] = None,
) -> tuple[Model, Params, dict]:
  """(model, params, info) pruned to `num_keep` layers: `choose_layers` then `keep_layers`.

  calibration: (tokens_BxT, mask_BxT or None), needed by rule="importance" (block importance is
  measured on it). info = dict(kept=[original indices], importance=[L] list or None, rule=rule).
  """
  importance = None
  if rule == "importance":
    if calibration is None:
      raise ValueError('prune: rule="importance" needs calibration=(tokens_BxT, mask_BxT)')
    tokens_BxT, mask_BxT = calibration
    importance = block_importance(model, params, tokens_BxT, mask_BxT)
  kept = choose_layers(model, num_keep, rule, importance)
  new_model, new_params = keep_layers(model, params, kept)
  info = dict(kept=kept, importance=None if importance is None else importance.tolist(), rule=rule)
  return new_model, new_params, info
