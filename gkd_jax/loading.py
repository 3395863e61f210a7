"""Models onto a mesh: a checkpoint (HF directory or GGUF file) read straight into the shardings of
its parameters' logical axes, and the teacher's one-vocabulary check."""

from __future__ import annotations

import dataclasses
import os

from gkd_jax import models, sharding, tokenizers
from gkd_jax.models.hf import is_gguf, load_pretrained, read_model
from gkd_jax.run_config import ModelSpec


def param_shardings(model, mesh, rules):
  """The `NamedSharding` of each parameter of `model` under the logical-axis `rules`."""
  return sharding.tree_shardings(
      mesh, models.logical_axes(model), rules, shapes=models.param_shapes(model)
  )


def load_model(spec: ModelSpec, mesh, rules, scan_layers: bool = False):
  """(model, params) of `spec.path`, placed with the shardings of its logical axes; errors name
  the config field (`spec.where`). `scan_layers`: the scanned model, its layers read per layer and
  stacked leaf by leaf (models/stacking.py)."""
  path, where = spec.path, spec.where
  gguf = is_gguf(path)
  if not gguf and not os.path.isfile(os.path.join(path, "config.json")):
    raise ValueError(
        f"{where}.path={path!r} is not a checkpoint directory (no config.json) or a .gguf file"
    )
  dtype = models.DTYPES[spec.dtype]
  try:
    model, _ = read_model(path, dtype)  # a config this code reads, or one line naming the field
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(
        f"{path if gguf else os.path.join(path, 'config.json')} ({where}.path): not a model config "
        f"this code reads ({type(e).__name__}: {e})"
    ) from None
  shardings = param_shardings(dataclasses.replace(model, scan_layers=scan_layers), mesh, rules)
  return load_pretrained(path, dtype, shardings, scan_layers=scan_layers)


def load_teacher(spec: ModelSpec, tokenizer, student, mesh, rules):
  """(model, params) of a teacher, in the student's form (looped or scanned), refused (one line)
  unless it shares the student's vocabulary."""
  teacher, teacher_params = load_model(spec, mesh, rules, student.scan_layers)
  sv, tv = student.config.vocab_size, teacher.config.vocab_size
  if sv != tv:
    raise ValueError(
        f"{spec.where} vocabulary ({tv}, {spec.path}) differs from the "
        f"student's ({sv}): distillation needs one shared vocabulary"
    )
  if tokenizers.has_tokenizer(spec.path):  # same ids, not just as many
    diff = tokenizers.vocabulary_difference(tokenizer, tokenizers.load_tokenizer(spec.path))
    if diff:
      raise ValueError(
          f"{spec.where} tokenizer ({spec.path}) differs from the student's "
          f"({tokenizer.path}): {diff}; distillation needs one shared vocabulary"
      )
  return teacher, teacher_params
