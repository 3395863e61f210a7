"""The typed run config: the user's `ml_collections` config (configs/default.py), converted once.

    cfg = run_config.from_config(config)   # RunConfig; raises on the first bad field
    cfg.gkd.lmbda, cfg.train.batch_size, cfg.teachers["a"].path, ...

The tree mirrors the user's groups field for field (`cfg.data.max_prompt_len` is
`config.data.max_prompt_len`), so every error names the dotted field the user wrote. Each group
checks its own fields' ranges when it is built (gkd_jax.fields); the rules that tie fields together
(mesh vs devices, batch divisibility, paths, combinations that would run another experiment) are
`config_validation.check`. The allowed values of a field are read from the code that implements
them (divergences.KINDS, kernels.IMPLS, optim.NAMES, ...). configs/default.py keeps the defaults and
their documentation; ml_collections stays the user's layer (files, --config.x= overrides, sweeps),
and nothing below `train.build` reads a ConfigDict.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from gkd_jax import divergences, gkd, kernels, models, optim, remat, sharding, tasks, tokenizers
from gkd_jax.fields import Group, boolean, choice, fail, field, integer, number, string


@dataclasses.dataclass(frozen=True)
class ModelSpec(Group):
  """A model: `student`, `teacher` or one entry `teachers.NAME` (then `weight` multiplies
  gkd.divergence_weight on its rows)."""

  path: str = field(check=string)
  dtype: str = field(check=choice(*models.DTYPES))
  preset: str = field("", string)  # `student`, and `teacher` for `gkd-jax plan` only
  weight: float = field(1.0, number(0))
  where: str = field("student", compare=False)  # the group's dotted name in the user's config

  @property
  def prefix(self) -> str:
    return self.where


SCAN_CHOICES = (True, False, "auto")


@dataclasses.dataclass(frozen=True)
class ModelRunConfig(Group):
  """How the decoders run (configs/default.py: `model`)."""

  GROUP = "model"
  scan_layers: Any = field(check=choice(*SCAN_CHOICES))


@dataclasses.dataclass(frozen=True)
class TokenizerConfig(Group):
  GROUP = "tokenizer"
  path: str = field(check=string)


def _epochs(v):
  if isinstance(v, bool) or not isinstance(v, int) or (v < 1 and v != -1):
    return "must be a positive integer or -1 (repeat forever)"
  return None


@dataclasses.dataclass(frozen=True)
class DataConfig(Group):
  GROUP = "data"
  train_path: str = field(check=string)
  eval_path: str = field(check=string)
  max_prompt_len: int = field(check=integer(2))
  max_completion_len: int = field(check=integer(1))
  shuffle: bool = field(check=boolean)
  num_epochs: int = field(check=_epochs)
  worker_count: int = field(check=integer(0))
  chat_family: str = field(check=choice("", *tokenizers.CHAT_FAMILIES))


@dataclasses.dataclass(frozen=True)
class GKDConfig(Group):
  GROUP = "gkd"
  lmbda: float = field(check=number(0, 1))
  mixing: str = field(check=choice(*gkd.MIXINGS))
  seq_kd: bool = field(check=boolean)
  teacher_cache: str = field(check=string)
  teacher_cache_k: int = field(check=integer(1))
  loss: str = field(check=choice(*divergences.KINDS))
  beta: float = field(check=number(0, 1))
  alpha: float = field(check=number(0, 1))
  temperature: float = field(check=number(0, lo_open=True))
  divergence_weight: float = field(check=number(0))
  ce_weight: float = field(check=number(0))
  kernel_impl: str = field(check=choice(*kernels.IMPLS))


@dataclasses.dataclass(frozen=True)
class SamplingConfig(Group):
  GROUP = "sampling"
  temperature: float = field(check=number(0))
  top_k: int = field(check=integer(0))
  top_p: float = field(check=number(0, 1, lo_open=True))
  max_new_tokens: int = field(check=integer(1))


@dataclasses.dataclass(frozen=True)
class TrainConfig(Group):
  GROUP = "train"
  batch_size: int = field(check=integer(1))
  num_steps: int = field(check=integer(1))
  log_every: int = field(check=integer(1))
  eval_every: int = field(check=integer(0))
  checkpoint_every: int = field(check=integer(1))
  keep_checkpoints: int = field(check=integer(1))
  async_checkpoints: bool = field(check=boolean)
  preemption_check_every: int = field(check=integer(1))
  export_final: bool = field(check=boolean)
  remat: Any = field(check=choice(*remat.CHOICES))
  max_nonfinite_steps: int = field(check=integer(0))


@dataclasses.dataclass(frozen=True)
class EvalConfig(Group):
  GROUP = "eval"
  batch_size: int = field(check=integer(1))
  num_examples: int = field(check=integer(1))
  max_new_tokens: int = field(check=integer(1))
  num_samples: int = field(check=integer(0))
  temperature: float = field(check=number(0, lo_open=True))
  teacher: bool = field(check=boolean)


@dataclasses.dataclass(frozen=True)
class MeshConfig(Group):
  """Sizes of the ("data", "fsdp", "tensor") axes; -1 = all remaining devices (checked against the
  device count by `config_validation.check`)."""

  GROUP = "mesh"
  data: int = field()
  fsdp: int = field()
  tensor: int = field()


@dataclasses.dataclass(frozen=True)
class TaskConfig(Group):
  GROUP = "task"
  name: str = field(check=choice("", *tasks.TASKS))


def _rules(rules) -> tuple:
  """The sharding rules as ((logical axis, mesh axes), ...), each name checked."""
  try:
    pairs = tuple(tuple(p) for p in rules)
  except TypeError:
    fail("sharding_rules", rules, "must be a tuple of (logical_axis, mesh_axes) pairs")
  for pair in pairs:
    if len(pair) != 2 or not isinstance(pair[0], str):
      fail("sharding_rules", pair, "entries must be (logical_axis, mesh_axes) pairs")
    name, axes = pair
    if name not in sharding.LOGICAL_AXES:
      fail(
          "sharding_rules",
          name,
          "is not a logical axis; choose from " + ", ".join(sharding.LOGICAL_AXES),
      )
    for a in () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes):
      if a not in sharding.MESH_AXES:
        fail(
            f"sharding_rules[{name}]",
            axes,
            "names a mesh axis not in " + ", ".join(sharding.MESH_AXES),
        )
  return pairs


@dataclasses.dataclass(frozen=True)
class RunConfig(Group):
  """A whole run (configs/default.py documents every field)."""

  seed: int = field(check=integer(0))
  student: ModelSpec = field()
  teacher: ModelSpec = field()
  model: ModelRunConfig = field()
  # Several teachers by name (sorted), instead of `teacher`; {} for one teacher.
  teachers: Mapping[str, ModelSpec] = field()
  default_teacher: str = field(check=string)
  tokenizer: TokenizerConfig = field()
  data: DataConfig = field()
  gkd: GKDConfig = field()
  sampling: SamplingConfig = field()
  optim: optim.OptimConfig = field()
  train: TrainConfig = field()
  eval: EvalConfig = field()
  mesh: MeshConfig = field()
  sharding_rules: tuple = field()
  task: TaskConfig = field()


_FIELD_CHECKS = {f.name: f.metadata["check"] for f in dataclasses.fields(RunConfig)}
TEACHER_FIELDS = ("path", "dtype", "weight")


def _teachers(group) -> dict:
  out = {}
  for name in sorted(group):
    entry = group[name]
    for f in TEACHER_FIELDS:
      if not hasattr(entry, "get") or f not in entry:
        raise ValueError(
            f"teachers.{name}.{f} is missing (each teacher needs path, dtype and weight)"
        )
    out[name] = ModelSpec(
        entry["path"], entry["dtype"], weight=entry["weight"], where=f"teachers.{name}"
    )
  return out


def _node(config, name):
  try:
    return config[name]
  except (KeyError, TypeError, AttributeError):
    raise ValueError(f"{name} is missing from the config (see configs/default.py)") from None


def from_config(config) -> RunConfig:
  """The typed tree of a user's config (a ConfigDict or nested mappings); raises ValueError (one line
  naming the dotted field) for the first field out of its range, in configs/default.py's order."""
  if isinstance(config, RunConfig):
    return config
  for name in ("seed", "default_teacher"):  # the top-level fields, before the groups
    check = _FIELD_CHECKS[name]
    if check(_node(config, name)):
      fail(name, _node(config, name), check(_node(config, name)))

  def group(cls):
    return cls.read(_node(config, cls.GROUP))

  def model(name):
    return ModelSpec.read(_node(config, name), name, weight=1.0, where=name)

  return RunConfig(
      seed=_node(config, "seed"),
      student=model("student"),
      teacher=model("teacher"),
      model=group(ModelRunConfig),
      teachers=_teachers(_node(config, "teachers")),
      default_teacher=_node(config, "default_teacher"),
      tokenizer=group(TokenizerConfig),
      data=group(DataConfig),
      gkd=group(GKDConfig),
      sampling=group(SamplingConfig),
      optim=group(optim.OptimConfig),
      train=group(TrainConfig),
      eval=group(EvalConfig),
      mesh=group(MeshConfig),
      sharding_rules=_rules(_node(config, "sharding_rules")),
      task=group(TaskConfig),
  )


def schema() -> dict:
  """{dotted field: its check (None: checked by config_validation)} of every leaf field a config
  must have, in the config's order (`teachers` entries and `sharding_rules` aside)."""
  out = {}
  for f in dataclasses.fields(RunConfig):
    part = {"student": ModelSpec, "teacher": ModelSpec, **_GROUPS}.get(f.name)
    if part is None:
      if f.name not in ("teachers", "sharding_rules"):
        out[f.name] = f.metadata.get("check")
      continue
    for g in dataclasses.fields(part):
      if g.name not in ("weight", "where"):
        out[f"{f.name}.{g.name}"] = g.metadata.get("check")
  return out


_GROUPS = {
    cls.GROUP: cls
    for cls in (
        ModelRunConfig,
        TokenizerConfig,
        DataConfig,
        GKDConfig,
        SamplingConfig,
        optim.OptimConfig,
        TrainConfig,
        EvalConfig,
        MeshConfig,
        TaskConfig,
    )
}


def scan_layers(cfg: RunConfig, platform: str) -> bool:
  """Whether the decoders scan over layers on `platform`. "auto": on TPU and GPU, not on CPU (where
  the scanned step is slower), and not with adafactor, whose parameter scale and update clipping
  would then be computed over all layers' stacked weights at once instead of per layer."""
  setting = cfg.model.scan_layers
  if setting == "auto":
    return platform != "cpu" and cfg.optim.name != "adafactor"
  return setting
