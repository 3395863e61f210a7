"""A run's batches: the Grain loader of a JSONL split, and a process-local batch as global arrays.

  loader = batches.loader(run, config.data.eval_path, batch_size=8, shuffle=False, num_epochs=1)
  for local in loader:                                # numpy, this process's rows
    batch = batches.global_batch(run, local)          # jax arrays sharded over the batch axes

Both the training loop (gkd_jax.loop) and the evaluation (gkd_jax.evaluation) read their data
through these two, so every process sees the same global batches whatever their number.
"""

from __future__ import annotations

import jax
import numpy as np

from gkd_jax import data, sharding


def loader(run, path: str, *, batch_size: int, shuffle: bool, num_epochs: int, row_extras=None):
  """The Grain loader of `path` for a `train.Run`: this process's share of each global batch of
  `batch_size` examples, tokenized with the run's tokenizer and cut to the config's lengths.

  row_extras: extra per-row fields (e.g. a teacher cache's top-k, `teacher_cache.stack_rows`).
  """
  c = run.config.data
  names = tuple(run.config.teachers)
  return data.make_loader(
      path,
      run.tokenizer,
      batch_size=sharding.per_process_batch_size(batch_size),
      max_prompt_len=c.max_prompt_len,
      max_completion_len=c.max_completion_len,
      seed=run.config.seed,
      shuffle=shuffle,
      num_epochs=num_epochs,
      worker_count=c.worker_count,
      chat_family=c.chat_family or None,
      split_global_batches=True,  # the same global batches whatever the number of processes
      row_extras=row_extras,
      teachers=names,
      default_teacher=run.config.default_teacher or (names[0] if len(names) == 1 else None),
  )


def global_batch(run, local_batch: dict) -> dict:
  """Process-local numpy batch -> global jax arrays sharded over the batch axes."""
  out = {}
  for key, value in local_batch.items():
    sh = sharding.batch_sharding(run.mesh, tuple(run.config.sharding_rules), value.ndim)
    out[key] = jax.make_array_from_process_local_data(sh, np.asarray(value))
  return out
