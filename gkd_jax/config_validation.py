"""Start-up validation of a run config (the schema of configs/default.py).

`validate(config)` raises one ValueError whose message is a single line naming the dotted field, its
value and what is allowed, e.g. "gkd.lmbda=1.5 is outside [0, 1]" or "gkd.loss='kl' is not one of
forward_kl, reverse_kl, ...". Field checks run first (in schema order), then the cross-field rules
(mesh vs devices, batch divisibility, required paths, and combinations that would silently run
another experiment than the fields describe). Nothing is written before it passes.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import jax

from gkd_jax import divergences, gkd, kernels, models, optim, remat, sharding, tasks, tokenizers
from gkd_jax.models.presets import PRESETS

# Every list of allowed values lives beside the code that implements it; read from there.
MODES = ("train", "eval", "sample")


def _num(lo=None, hi=None, lo_open=False, hi_open=False, integer=False):
  """A numeric range check; returns the message suffix when the value is out of range, else None."""

  def check(v):
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or (integer and not isinstance(v, int))
    ):
      return f"must be {'an integer' if integer else 'a number'}"
    if isinstance(v, float) and not math.isfinite(v):
      return "must be finite"
    bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
    bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
    if bad_lo or bad_hi:
      if lo is not None and hi is not None:
        return f"is outside {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
      if lo is not None:
        return f"must be {'>' if lo_open else '>='} {lo}"
      return f"must be {'<' if hi_open else '<='} {hi}"
    return None

  return check


def _int(lo=None, hi=None):
  return _num(lo, hi, integer=True)


def _choice(*options):
  def check(v):
    if v not in options:
      return "is not one of " + ", ".join(repr(o) if o == "" else str(o) for o in options)
    return None

  return check


def _bool(v):
  return None if isinstance(v, bool) else "must be True or False"


def _str(v):
  return None if isinstance(v, str) else "must be a string"


# (dotted field, check) in the order of configs/default.py.
FIELDS = (
    ("seed", _int(0)),
    ("student.path", _str),
    ("student.preset", _str),
    ("student.dtype", _choice(*models.DTYPES)),
    ("teacher.path", _str),
    ("teacher.dtype", _choice(*models.DTYPES)),
    ("teacher.preset", _str),
    ("default_teacher", _str),
    ("tokenizer.path", _str),
    ("data.train_path", _str),
    ("data.eval_path", _str),
    ("data.max_prompt_len", _int(2)),
    ("data.max_completion_len", _int(1)),
    ("data.shuffle", _bool),
    ("data.worker_count", _int(0)),
    ("data.chat_family", _choice("", *tokenizers.CHAT_FAMILIES)),
    ("gkd.lmbda", _num(0, 1)),
    ("gkd.mixing", _choice(*gkd.MIXINGS)),
    ("gkd.seq_kd", _bool),
    ("gkd.teacher_cache", _str),
    ("gkd.teacher_cache_k", _int(1)),
    ("gkd.loss", _choice(*divergences.KINDS)),
    ("gkd.beta", _num(0, 1)),
    ("gkd.alpha", _num(0, 1)),
    ("gkd.temperature", _num(0, lo_open=True)),
    ("gkd.divergence_weight", _num(0)),
    ("gkd.ce_weight", _num(0)),
    ("gkd.kernel_impl", _choice(*kernels.IMPLS)),
    ("sampling.temperature", _num(0)),
    ("sampling.top_k", _int(0)),
    ("sampling.top_p", _num(0, 1, lo_open=True)),
    ("sampling.max_new_tokens", _int(1)),
    ("optim.name", _choice(*optim.NAMES)),
    ("optim.learning_rate", _num(0, lo_open=True)),
    ("optim.schedule", _choice(*optim.SCHEDULES)),
    ("optim.warmup_steps", _int(0)),
    ("optim.weight_decay", _num(0)),
    ("optim.b1", _num(0, 1, hi_open=True)),
    ("optim.b2", _num(0, 1, hi_open=True)),
    ("optim.grad_clip", _num(0)),
    ("optim.grad_accum_steps", _int(1)),
    ("train.batch_size", _int(1)),
    ("train.num_steps", _int(1)),
    ("train.log_every", _int(1)),
    ("train.eval_every", _int(0)),
    ("train.checkpoint_every", _int(1)),
    ("train.keep_checkpoints", _int(1)),
    ("train.async_checkpoints", _bool),
    ("train.preemption_check_every", _int(1)),
    ("train.export_final", _bool),
    ("train.remat", _choice(*remat.CHOICES)),
    ("train.max_nonfinite_steps", _int(0)),
    ("eval.batch_size", _int(1)),
    ("eval.num_examples", _int(1)),
    ("eval.max_new_tokens", _int(1)),
    ("eval.num_samples", _int(0)),
    ("eval.temperature", _num(0, lo_open=True)),
    ("eval.teacher", _bool),
    ("task.name", _choice("", *tasks.TASKS)),
)


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      raise ValueError(f"{dotted} is missing from the config (see configs/default.py)") from None
  return node


def _fail(field: str, value: Any, message: str):
  raise ValueError(f"{field}={value!r} {message}")


def _validate_rules(rules) -> None:
  try:
    pairs = [tuple(p) for p in rules]
  except TypeError:
    _fail("sharding_rules", rules, "must be a tuple of (logical_axis, mesh_axes) pairs")
  for pair in pairs:
    if len(pair) != 2 or not isinstance(pair[0], str):
      _fail("sharding_rules", pair, "entries must be (logical_axis, mesh_axes) pairs")
    name, axes = pair
    if name not in sharding.LOGICAL_AXES:
      _fail(
          "sharding_rules",
          name,
          "is not a logical axis; choose from " + ", ".join(sharding.LOGICAL_AXES),
      )
    axes_t = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    for a in axes_t:
      if a not in sharding.MESH_AXES:
        _fail(
            f"sharding_rules[{name}]",
            axes,
            "names a mesh axis not in " + ", ".join(sharding.MESH_AXES),
        )


def _require_path(field: str, value: str, why: str) -> None:
  if not value:
    raise ValueError(f"{field}='' must be set {why}")
  if not os.path.exists(value):
    _fail(field, value, "does not exist")


def _refuse_wrong_experiments(config) -> None:
  """Combinations that run, but not the experiment their fields describe."""
  lmbda, loss = _get(config, "gkd.lmbda"), _get(config, "gkd.loss")
  if _get(config, "gkd.divergence_weight") == 0 and lmbda > 0:
    raise ValueError(
        f"gkd.divergence_weight=0 with gkd.lmbda={lmbda}: the cross-entropy term "
        "only trains on dataset (or gkd.seq_kd teacher) completions, so on-policy "
        "rows would train on nothing; set gkd.lmbda=0 for SFT or SeqKD"
    )
  if loss == "sampled_reverse_kl":
    temperature = _get(config, "gkd.temperature")
    wrong = [
        f"{field}={value!r} (needs {want!r})"
        for field, value, want in (
            ("gkd.lmbda", lmbda, 1.0),
            ("gkd.seq_kd", _get(config, "gkd.seq_kd"), False),
            ("sampling.temperature", _get(config, "sampling.temperature"), temperature),
            ("sampling.top_k", _get(config, "sampling.top_k"), 0),
            ("sampling.top_p", _get(config, "sampling.top_p"), 1.0),
        )
        if value != want
    ]
    if wrong:
      raise ValueError(
          "gkd.loss='sampled_reverse_kl' is unbiased only on the student's own "
          "unfiltered samples at the loss temperature: " + ", ".join(wrong)
      )
  cache = _get(config, "gkd.teacher_cache")
  mixing = _get(config, "gkd.mixing")
  if cache and (_get(config, "gkd.seq_kd") or lmbda == 1 or (lmbda > 0 and mixing != "batch")):
    raise ValueError(
        f"gkd.teacher_cache={cache!r} with gkd.lmbda={lmbda}, gkd.mixing={mixing!r}, "
        f"gkd.seq_kd={_get(config, 'gkd.seq_kd')}: the cache holds the teacher on dataset "
        "completions, which a step uses only when it is off-policy as a whole; use it with "
        "gkd.lmbda=0 (no teacher in memory) or 0 < gkd.lmbda < 1 with gkd.mixing='batch', "
        "gkd.seq_kd=False"
    )
  if cache and _get(config, "teachers"):
    raise ValueError(
        f"gkd.teacher_cache={cache!r} with teachers ({', '.join(_get(config, 'teachers'))}): "
        "a cache holds one teacher; give it as `teacher`, or use no cache"
    )
  batch = _get(config, "train.batch_size")
  if _get(config, "gkd.mixing") == "example" and 0 < lmbda < 1:
    k = int(round(lmbda * batch))
    if k in (0, batch):
      raise ValueError(
          f"gkd.mixing='example' with gkd.lmbda={lmbda} and train.batch_size={batch} "
          f"puts round(λ·B)={k} rows on-policy, i.e. λ={k // batch}; use "
          "gkd.mixing='batch' or a larger train.batch_size"
      )


TEACHER_FIELDS = (("path", _str), ("dtype", _choice(*models.DTYPES)), ("weight", _num(0)))


def teachers(config) -> dict:
  """{name: teachers.NAME} in sorted name order, validated ({} for a single `teacher`)."""
  group = _get(config, "teachers")
  out = {}
  for name in sorted(group):
    entry = group[name]
    for field, check in TEACHER_FIELDS:
      dotted = f"teachers.{name}.{field}"
      if not hasattr(entry, "get") or field not in entry:
        raise ValueError(f"{dotted} is missing (each teacher needs path, dtype and weight)")
      message = check(entry[field])
      if message:
        _fail(dotted, entry[field], message)
    out[name] = entry
  default = _get(config, "default_teacher")
  if out and default and default not in out:
    _fail("default_teacher", default, "is not one of teachers: " + ", ".join(out))
  if out and _get(config, "teacher.path"):
    raise ValueError(
        f"teacher.path={_get(config, 'teacher.path')!r} and teachers ({', '.join(out)}) are both "
        "set: give one teacher in `teacher` or several in `teachers`"
    )
  return out


def validate(
    config, num_devices: Optional[int] = None, mode: str = "train", check_paths: bool = True
) -> None:
  """Raises ValueError (one line: field, value, allowed) for the first bad field or combination.

  num_devices: the mesh must use exactly this many (default: jax.device_count()).
  mode: "train" needs data.train_path; "eval" needs data.eval_path; "sample" needs neither.
  check_paths: also check that the given files and directories exist.
  """
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is not one of {', '.join(MODES)}")
  for field, check in FIELDS:
    value = _get(config, field)
    message = check(value)
    if message:
      _fail(field, value, message)
  num_epochs = _get(config, "data.num_epochs")
  if (
      isinstance(num_epochs, bool)
      or not isinstance(num_epochs, int)
      or (num_epochs < 1 and num_epochs != -1)
  ):
    _fail("data.num_epochs", num_epochs, "must be a positive integer or -1 (repeat forever)")
  _validate_rules(_get(config, "sharding_rules"))

  if num_devices is None:
    num_devices = jax.device_count()
  mesh = {a: _get(config, f"mesh.{a}") for a in sharding.MESH_AXES}
  data, fsdp, _ = sharding.resolve_mesh_shape(mesh, num_devices)
  batch_shards = data * fsdp
  for field in ("train.batch_size", "eval.batch_size"):
    b = _get(config, field)
    if b % batch_shards:
      _fail(field, b, f"is not divisible by mesh data*fsdp = {data}*{fsdp} = {batch_shards}")

  c_len = _get(config, "data.max_completion_len")
  for field in ("sampling.max_new_tokens",):
    if _get(config, field) > c_len:
      _fail(
          field,
          _get(config, field),
          f"exceeds data.max_completion_len={c_len}: sampled "
          "completions must fit the batch's completion length",
      )

  div_w, ce_w = _get(config, "gkd.divergence_weight"), _get(config, "gkd.ce_weight")
  if div_w == 0 and ce_w == 0:
    raise ValueError(
        "gkd.divergence_weight=0 and gkd.ce_weight=0: at least one loss weight must " "be > 0"
    )
  if mode == "train":  # eval and sample train nothing
    _refuse_wrong_experiments(config)
  teachers(config)
  student_path, preset = _get(config, "student.path"), _get(config, "student.preset")
  if not student_path and not preset:
    raise ValueError("student.path='' and student.preset='': set a checkpoint path or a preset")
  if not student_path and preset not in PRESETS:
    _fail("student.preset", preset, "is not a preset; choose one of " + ", ".join(PRESETS))
  tokenizer_path = _get(config, "tokenizer.path") or student_path
  if not tokenizer_path:
    raise ValueError("tokenizer.path='' must be set when the student is built from a preset")
  if not check_paths:
    return
  if student_path:
    _require_path("student.path", student_path, "")
  if _get(config, "tokenizer.path"):
    _require_path("tokenizer.path", _get(config, "tokenizer.path"), "")
  seq_kd = _get(config, "gkd.seq_kd")
  if mode != "sample" and (div_w > 0 or seq_kd):
    why = (
        "(gkd.seq_kd=True samples completions from the teacher)"
        if seq_kd
        else f"when gkd.divergence_weight={div_w} > 0 (set it to 0 for SFT without a teacher)"
    )
    group = teachers(config)
    for name, entry in group.items():
      _require_path(f"teachers.{name}.path", entry.path, "")
    if not group:
      _require_path("teacher.path", _get(config, "teacher.path"), why)
  if mode == "train":
    _require_path("data.train_path", _get(config, "data.train_path"), "for training")
  if _get(config, "data.eval_path") or mode == "eval":
    _require_path("data.eval_path", _get(config, "data.eval_path"), "for evaluation")
