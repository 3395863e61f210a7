"""configs/default.py documents every field; validate() names the bad field, its value and the range."""

import importlib.util
import os
import re

import ml_collections
import pytest

from gkd_jax import config_validation as cv
from gkd_jax import run_config
from gkd_jax import sharding
from gkd_jax.tasks import asset_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _default_module():
  spec = importlib.util.spec_from_file_location(
      "default_cfg", os.path.join(ROOT, "configs", "default.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture
def config(tmp_path):
  """The default config with the required paths pointing at real files."""
  c = _default_module().get_config()
  (tmp_path / "teacher").mkdir()
  c.student.preset = "tiny_llama"
  c.teacher.path = str(tmp_path / "teacher")
  c.tokenizer.path = asset_dir("arithmetic")
  c.data.train_path = os.path.join(asset_dir("arithmetic"), "train.jsonl")
  c.data.eval_path = os.path.join(asset_dir("arithmetic"), "eval.jsonl")
  return c


def _set(c, dotted, value):
  """In place when the type allows; the parametrized type tests rebuild the config (see below)."""
  *groups, name = dotted.split(".")
  node = c
  for g in groups:
    node = node[g]
  with c.unlocked():
    node[name] = value


def _replaced(c, dotted, value):
  """A copy of `c` with one field set to any value (ConfigDict refuses type changes in place, but a
  config file or a plain dict can still hold a wrong type)."""
  d = c.to_dict()
  *groups, name = dotted.split(".")
  node = d
  for g in groups:
    node = node[g]
  node[name] = value
  return ml_collections.ConfigDict(d)


def _error(c, **kw):
  with pytest.raises(ValueError) as e:
    cv.validate(c, num_devices=kw.pop("num_devices", 8), **kw)
  message = str(e.value)
  assert "\n" not in message
  return message


def test_default_config_is_valid_and_every_field_commented(config):
  cv.validate(config, num_devices=8)
  cv.validate(config, num_devices=1)
  with open(os.path.join(ROOT, "configs", "default.py")) as f:
    source = f.read()
  assigned = re.findall(r"^  c\.([a-z0-9_.]+) = .*$", source, flags=re.M)
  for line in source.splitlines():
    m = re.match(r"^  c\.([a-z_]+\.[a-z0-9_]+) = ", line)
    if m:
      assert "#" in line, f"field {m.group(1)} has no comment"
  # Every field the validator knows is in the default config, and vice versa.
  groups = {a for a in assigned if "." not in a}
  fields = {a for a in assigned if "." in a} | {
      g for g in groups if not isinstance(config[g], type(config.student))
  }
  # The typed config (gkd_jax.run_config) has exactly the default config's fields.
  assert fields == set(run_config.schema()) | {"sharding_rules"}
  assert {f"mesh.{a}" for a in sharding.MESH_AXES} <= fields


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("gkd.lmbda", 1.5, "gkd.lmbda=1.5 is outside [0, 1]"),
        ("gkd.lmbda", -0.1, "gkd.lmbda=-0.1 is outside [0, 1]"),
        (
            "gkd.loss",
            "kl",
            "gkd.loss='kl' is not one of forward_kl, reverse_kl, jsd, skew_forward_kl, "
            "skew_reverse_kl, tvd, sampled_reverse_kl",
        ),
        ("gkd.mixing", "token", "gkd.mixing='token' is not one of batch, example"),
        ("gkd.beta", 1.01, "gkd.beta=1.01 is outside [0, 1]"),
        ("gkd.alpha", -1, "gkd.alpha=-1 is outside [0, 1]"),
        ("gkd.temperature", 0.0, "gkd.temperature=0.0 must be > 0"),
        ("gkd.ce_weight", -1.0, "gkd.ce_weight=-1.0 must be >= 0"),
        (
            "gkd.kernel_impl",
            "cuda",
            "gkd.kernel_impl='cuda' is not one of auto, reference, chunked, " "pallas",
        ),
        ("gkd.seq_kd", 1, "gkd.seq_kd=1 must be True or False"),
        ("sampling.top_p", 0.0, "sampling.top_p=0.0 is outside (0, 1]"),
        ("sampling.top_k", -3, "sampling.top_k=-3 must be >= 0"),
        ("sampling.max_new_tokens", 0, "sampling.max_new_tokens=0 must be >= 1"),
        ("optim.name", "lion", "optim.name='lion' is not one of adamw, adafactor, sgd"),
        ("optim.learning_rate", 0, "optim.learning_rate=0 must be > 0"),
        ("optim.b2", 1.0, "optim.b2=1.0 is outside [0, 1)"),
        ("optim.grad_accum_steps", 0, "optim.grad_accum_steps=0 must be >= 1"),
        ("train.batch_size", 2.5, "train.batch_size=2.5 must be an integer"),
        ("train.num_steps", 0, "train.num_steps=0 must be >= 1"),
        ("train.preemption_check_every", 0, "train.preemption_check_every=0 must be >= 1"),
        ("student.dtype", "float16", "student.dtype='float16' is not one of float32, bfloat16"),
        ("task.name", "gsm8k", "task.name='gsm8k' is not one of '', arithmetic"),
        ("data.num_epochs", 0, "data.num_epochs=0 must be a positive integer or -1"),
        ("data.max_prompt_len", 1, "data.max_prompt_len=1 must be >= 2"),
        ("data.chat_family", "mistral", "data.chat_family='mistral' is not one of '', gemma"),
        ("mesh.fsdp", 0, "mesh.fsdp=0 must be a positive integer or -1"),
    ],
)
def test_bad_field_names_field_value_and_range(config, field, value, expected):
  assert _error(_replaced(config, field, value)).startswith(expected)


def test_mesh_must_fit_devices(config):
  _set(config, "mesh.data", 2)
  _set(config, "mesh.fsdp", 2)
  assert "mesh=2x2x1 needs 4 devices but 8 are available" in _error(config)
  cv.validate(config, num_devices=4)
  _set(config, "mesh.data", -1)
  _set(config, "mesh.fsdp", -1)
  assert _error(config).startswith("mesh.fsdp=-1 is a second -1")
  _set(config, "mesh.data", 3)
  assert "mesh=3x-1x1 does not fit 8 devices" in _error(config)
  assert sharding.resolve_mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
  assert sharding.resolve_mesh_shape({"data": 1, "fsdp": 4, "tensor": -1}, 8) == (1, 4, 2)


def test_batch_divisible_by_data_times_fsdp(config):
  _set(config, "train.batch_size", 6)
  assert _error(config) == "train.batch_size=6 is not divisible by mesh data*fsdp = 1*8 = 8"
  cv.validate(config, num_devices=2)  # fsdp fills 2 devices: 6 is fine
  _set(config, "mesh.tensor", 2)
  _set(config, "train.batch_size", 12)
  cv.validate(config, num_devices=8)  # data*fsdp = 4
  _set(config, "eval.batch_size", 2)
  assert _error(config).startswith("eval.batch_size=2 is not divisible by mesh data*fsdp")


def test_teacher_required_unless_sft(config):
  _set(config, "teacher.path", "")
  assert _error(config).startswith("teacher.path='' must be set when gkd.divergence_weight=1.0")
  _set(config, "gkd.divergence_weight", 0.0)
  _set(config, "gkd.ce_weight", 1.0)
  _set(config, "gkd.lmbda", 0.0)
  cv.validate(config, num_devices=8)  # SFT needs no teacher
  _set(config, "gkd.seq_kd", True)
  assert "gkd.seq_kd=True" in _error(config)
  _set(config, "gkd.seq_kd", False)
  _set(config, "gkd.ce_weight", 0.0)
  assert "at least one loss weight must be > 0" in _error(config)


def test_paths_and_student(config, tmp_path):
  _set(config, "teacher.path", str(tmp_path / "nope"))
  assert _error(config) == f"teacher.path={str(tmp_path / 'nope')!r} does not exist"
  _set(config, "teacher.path", str(tmp_path))
  _set(config, "data.train_path", "")
  assert _error(config) == "data.train_path='' must be set for training"
  cv.validate(config, num_devices=8, mode="sample")
  _set(config, "student.preset", "")
  _set(config, "data.train_path", os.path.join(asset_dir("arithmetic"), "train.jsonl"))
  assert "set a checkpoint path or a preset" in _error(config)
  _set(config, "student.preset", "gpt5")
  assert _error(config).startswith("student.preset='gpt5' is not a preset; choose one of")
  _set(config, "student.preset", "tiny_llama")
  _set(config, "tokenizer.path", "")
  assert "tokenizer.path='' must be set" in _error(config)


def test_rules_missing_fields_and_sampling_length(config):
  with config.unlocked():
    config.sharding_rules = (("embed", "model"),)
  assert "names a mesh axis not in data, fsdp, tensor" in _error(config)
  with config.unlocked():
    config.sharding_rules = (("hidden", None),)
  assert _error(config).startswith("sharding_rules='hidden' is not a logical axis")
  with config.unlocked():
    config.sharding_rules = (("embed", ("fsdp", "data")), ("vocab", None))
  cv.validate(config, num_devices=8)
  _set(config, "sampling.max_new_tokens", config.data.max_completion_len + 1)
  assert "exceeds data.max_completion_len" in _error(config)
  with config.unlocked():
    del config.gkd["lmbda"]
  assert _error(config).startswith("gkd.lmbda is missing from the config")


@pytest.mark.parametrize(
    "overrides, fields",
    [
        # SFT with the default λ=1: the CE term skips on-policy rows, so nothing would be trained.
        (
            {"gkd.divergence_weight": 0.0, "gkd.ce_weight": 1.0, "teacher.path": ""},
            ["gkd.divergence_weight=0", "gkd.lmbda=1.0", "gkd.lmbda=0"],
        ),
        (
            {"gkd.divergence_weight": 0.0, "gkd.ce_weight": 1.0, "gkd.lmbda": 0.5},
            ["gkd.divergence_weight=0", "gkd.lmbda=0.5"],
        ),
        # The single-sample reverse KL estimator is unbiased only on-policy at the loss temperature.
        ({"gkd.loss": "sampled_reverse_kl", "gkd.lmbda": 0.5}, ["gkd.lmbda=0.5"]),
        ({"gkd.loss": "sampled_reverse_kl", "gkd.seq_kd": True}, ["gkd.seq_kd=True"]),
        (
            {"gkd.loss": "sampled_reverse_kl", "sampling.temperature": 0.7},
            ["sampling.temperature=0.7", "(needs 1.0)"],
        ),
        ({"gkd.loss": "sampled_reverse_kl", "sampling.top_k": 5}, ["sampling.top_k=5"]),
        ({"gkd.loss": "sampled_reverse_kl", "sampling.top_p": 0.9}, ["sampling.top_p=0.9"]),
        # Example mixing that rounds to no on-policy row, or to all of them.
        (
            {"gkd.mixing": "example", "gkd.lmbda": 0.05, "train.batch_size": 8},
            ["gkd.mixing='example'", "train.batch_size=8", "round(λ·B)=0"],
        ),
        ({"gkd.mixing": "example", "gkd.lmbda": 0.95, "train.batch_size": 8}, ["round(λ·B)=8"]),
    ],
)
def test_configs_that_would_run_another_experiment_are_refused(config, overrides, fields):
  for field, value in overrides.items():
    _set(config, field, value)
  message = _error(config)
  for f in fields:
    assert f in message, message


def test_the_experiments_next_to_the_traps_still_pass(config):
  _set(config, "gkd.divergence_weight", 0.0)
  _set(config, "gkd.ce_weight", 1.0)
  cv.validate(config, num_devices=8, mode="eval")  # λ only matters to training
  _set(config, "gkd.divergence_weight", 1.0)
  _set(config, "gkd.ce_weight", 0.0)
  for field, value in {
      "gkd.loss": "sampled_reverse_kl",
      "gkd.temperature": 0.7,
      "sampling.temperature": 0.7,
  }.items():
    _set(config, field, value)
  cv.validate(config, num_devices=8)  # on-policy at the loss temperature
  _set(config, "gkd.loss", "jsd")
  _set(config, "gkd.mixing", "example")
  _set(config, "gkd.lmbda", 0.5)
  cv.validate(config, num_devices=8)  # 4 of 8 rows on-policy
  for field, value in {
      "gkd.divergence_weight": 0.0,
      "gkd.ce_weight": 1.0,
      "gkd.lmbda": 0.0,
      "gkd.seq_kd": True,
  }.items():
    _set(config, field, value)
  cv.validate(config, num_devices=8)  # SeqKD as SFT on the teacher's samples
