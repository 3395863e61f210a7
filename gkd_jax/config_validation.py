"""Start-up validation of a run config: each field's range, then the rules that tie fields together.

`validate(config)` converts the user's config into the typed `run_config.RunConfig` (each group
checks its own fields' ranges, in configs/default.py's order) and then applies the cross-field rules
below (mesh vs devices, batch divisibility, required paths, and combinations that would silently run
another experiment than the fields describe). Either raises one ValueError whose message is a single
line naming the dotted field, its value and what is allowed, e.g. "gkd.lmbda=1.5 is outside [0, 1]".
Nothing is written before it passes.
"""

from __future__ import annotations

import os
from typing import Optional

import jax

from gkd_jax import run_config, sharding
from gkd_jax.fields import fail as _fail
from gkd_jax.models.presets import PRESETS
from gkd_jax.run_config import RunConfig

MODES = ("train", "eval", "sample")


def _require_path(field: str, value: str, why: str) -> None:
  if not value:
    raise ValueError(f"{field}='' must be set {why}")
  if not os.path.exists(value):
    _fail(field, value, "does not exist")


def _refuse_wrong_experiments(cfg: RunConfig) -> None:
  """Combinations that run, but not the experiment their fields describe."""
  g = cfg.gkd
  lmbda, loss = g.lmbda, g.loss
  if g.divergence_weight == 0 and lmbda > 0:
    raise ValueError(
        f"gkd.divergence_weight=0 with gkd.lmbda={lmbda}: the cross-entropy term "
        "only trains on dataset (or gkd.seq_kd teacher) completions, so on-policy "
        "rows would train on nothing; set gkd.lmbda=0 for SFT or SeqKD"
    )
  if loss == "sampled_reverse_kl":
    temperature = g.temperature
    wrong = [
        f"{field}={value!r} (needs {want!r})"
        for field, value, want in (
            ("gkd.lmbda", lmbda, 1.0),
            ("gkd.seq_kd", g.seq_kd, False),
            ("sampling.temperature", cfg.sampling.temperature, temperature),
            ("sampling.top_k", cfg.sampling.top_k, 0),
            ("sampling.top_p", cfg.sampling.top_p, 1.0),
        )
        if value != want
    ]
    if wrong:
      raise ValueError(
          "gkd.loss='sampled_reverse_kl' is unbiased only on the student's own "
          "unfiltered samples at the loss temperature: " + ", ".join(wrong)
      )
  cache, mixing = g.teacher_cache, g.mixing
  if cache and (g.seq_kd or lmbda == 1 or (lmbda > 0 and mixing != "batch")):
    raise ValueError(
        f"gkd.teacher_cache={cache!r} with gkd.lmbda={lmbda}, gkd.mixing={mixing!r}, "
        f"gkd.seq_kd={g.seq_kd}: the cache holds the teacher on dataset "
        "completions, which a step uses only when it is off-policy as a whole; use it with "
        "gkd.lmbda=0 (no teacher in memory) or 0 < gkd.lmbda < 1 with gkd.mixing='batch', "
        "gkd.seq_kd=False"
    )
  if cache and cfg.teachers:
    raise ValueError(
        f"gkd.teacher_cache={cache!r} with teachers ({', '.join(cfg.teachers)}): "
        "a cache holds one teacher; give it as `teacher`, or use no cache"
    )
  batch = cfg.train.batch_size
  if mixing == "example" and 0 < lmbda < 1:
    k = int(round(lmbda * batch))
    if k in (0, batch):
      raise ValueError(
          f"gkd.mixing='example' with gkd.lmbda={lmbda} and train.batch_size={batch} "
          f"puts round(λ·B)={k} rows on-policy, i.e. λ={k // batch}; use "
          "gkd.mixing='batch' or a larger train.batch_size"
      )


def _check_teachers(cfg: RunConfig) -> None:
  if cfg.teachers and cfg.default_teacher and cfg.default_teacher not in cfg.teachers:
    _fail(
        "default_teacher", cfg.default_teacher, "is not one of teachers: " + ", ".join(cfg.teachers)
    )
  if cfg.teachers and cfg.teacher.path:
    raise ValueError(
        f"teacher.path={cfg.teacher.path!r} and teachers ({', '.join(cfg.teachers)}) are both "
        "set: give one teacher in `teacher` or several in `teachers`"
    )


def validate(
    config, num_devices: Optional[int] = None, mode: str = "train", check_paths: bool = True
) -> RunConfig:
  """The typed config, or ValueError (one line: field, value, allowed) for the first bad field or
  combination.

  num_devices: the mesh must use exactly this many (default: jax.device_count()).
  mode: "train" needs data.train_path; "eval" needs data.eval_path; "sample" needs neither.
  check_paths: also check that the given files and directories exist.
  """
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is not one of {', '.join(MODES)}")
  cfg = run_config.from_config(config)
  check(cfg, num_devices, mode, check_paths)
  return cfg


def check(
    cfg: RunConfig, num_devices: Optional[int] = None, mode: str = "train", check_paths: bool = True
) -> None:
  """The cross-field rules of a typed config (see `validate`)."""
  if num_devices is None:
    num_devices = jax.device_count()
  mesh = {a: getattr(cfg.mesh, a) for a in sharding.MESH_AXES}
  data, fsdp, _ = sharding.resolve_mesh_shape(mesh, num_devices)
  batch_shards = data * fsdp
  for group in (cfg.train, cfg.eval):
    if group.batch_size % batch_shards:
      _fail(
          group.dotted("batch_size"),
          group.batch_size,
          f"is not divisible by mesh data*fsdp = {data}*{fsdp} = {batch_shards}",
      )
  c_len = cfg.data.max_completion_len
  if cfg.sampling.max_new_tokens > c_len:
    _fail(
        "sampling.max_new_tokens",
        cfg.sampling.max_new_tokens,
        f"exceeds data.max_completion_len={c_len}: sampled "
        "completions must fit the batch's completion length",
    )
  div_w, ce_w = cfg.gkd.divergence_weight, cfg.gkd.ce_weight
  if div_w == 0 and ce_w == 0:
    raise ValueError(
        "gkd.divergence_weight=0 and gkd.ce_weight=0: at least one loss weight must be > 0"
    )
  if mode == "train":  # eval and sample train nothing
    _refuse_wrong_experiments(cfg)
  if cfg.model.scan_layers is True and cfg.optim.name == "adafactor" and mode == "train":
    raise ValueError(
        "model.scan_layers=True with optim.name='adafactor': adafactor's parameter scale and "
        "update clipping would be computed over all layers' stacked weights, not per layer as "
        "the looped model trains; use model.scan_layers=False or 'auto' (which loops for adafactor)"
    )
  _check_teachers(cfg)
  student_path, preset = cfg.student.path, cfg.student.preset
  if not student_path and not preset:
    raise ValueError("student.path='' and student.preset='': set a checkpoint path or a preset")
  if not student_path and preset not in PRESETS:
    _fail("student.preset", preset, "is not a preset; choose one of " + ", ".join(PRESETS))
  if not (cfg.tokenizer.path or student_path):
    raise ValueError("tokenizer.path='' must be set when the student is built from a preset")
  if check_paths:
    _check_paths(cfg, mode)


def _check_paths(cfg: RunConfig, mode: str) -> None:
  if cfg.student.path:
    _require_path("student.path", cfg.student.path, "")
  if cfg.tokenizer.path:
    _require_path("tokenizer.path", cfg.tokenizer.path, "")
  div_w, seq_kd = cfg.gkd.divergence_weight, cfg.gkd.seq_kd
  if mode != "sample" and (div_w > 0 or seq_kd):
    why = (
        "(gkd.seq_kd=True samples completions from the teacher)"
        if seq_kd
        else f"when gkd.divergence_weight={div_w} > 0 (set it to 0 for SFT without a teacher)"
    )
    for name, entry in cfg.teachers.items():
      _require_path(f"teachers.{name}.path", entry.path, "")
    if not cfg.teachers:
      _require_path("teacher.path", cfg.teacher.path, why)
  if mode == "train":
    _require_path("data.train_path", cfg.data.train_path, "for training")
  if cfg.data.eval_path or mode == "eval":
    _require_path("data.eval_path", cfg.data.eval_path, "for evaluation")
