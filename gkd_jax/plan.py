"""`gkd-jax plan`: does a config fit a TPU slice? Compiled for that slice on any host, no TPU needed.

  gkd-jax plan --config=configs/gemma2_9b_to_2b.py --topology=v5p-64 [--json]

The student and teacher are built abstractly from their config.json (or `preset`): no weights are
read, so a plan needs only the two small config files. For the slice's devices
(`tpu_topology.tpu_devices`, libtpu) and the config's mesh and batch, the real XLA:TPU and Mosaic
compilers compile the run's three programs: `train_step` (with the on-policy sampler inside it when
gkd.lmbda > 0), `eval_step`, and the eval `sampler` (its KV cache included). Per device it
reports XLA's memory analysis (arguments, outputs, aliased, temporaries; peak = arguments + outputs -
aliased + temporaries) against the chip's HBM, the compile time, and XLA's FLOPs and bytes accessed.
When a program does not fit, the knobs that apply are re-planned and their effect reported.

Exit code 0 when every program fits, 1 when one does not, 2 on bad input (config, topology) or when
libtpu is missing. The last line of `--json` output is one JSON object.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import time
from typing import Optional

from gkd_jax import tpu_topology

tpu_topology.compile_only_env()  # before jax starts its backends (no-op if it already has)

import jax  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from gkd_jax import evaluation, gkd, models, programs, sharding, teacher_sources, train  # noqa: E402  pylint: disable=g-import-not-at-top
from gkd_jax import run_config  # noqa: E402
from gkd_jax.config_validation import validate  # noqa: E402
from gkd_jax.models.hf_config import config_from_hf  # noqa: E402
from gkd_jax.models.presets import PRESETS, get_preset  # noqa: E402
from gkd_jax import memory_report  # noqa: E402  pylint: disable=g-import-not-at-top

STEPS = ("train_step", "eval_step", "sampler")
COST_NOTE = (
    "FLOPs / bytes: XLA's cost analysis of one call per device; a while loop's body (the "
    "sampler's decode loop) is counted once, not once per generated token."
)


@dataclasses.dataclass
class StepPlan:
  """Per-device memory (bytes), cost and compile time of one compiled program."""

  argument_bytes: Optional[int] = None
  output_bytes: Optional[int] = None
  alias_bytes: Optional[int] = None
  temp_bytes: Optional[int] = None
  peak_bytes: Optional[int] = None
  flops: Optional[float] = None
  bytes_accessed: Optional[float] = None
  compile_s: float = 0.0
  error: Optional[str] = None  # XLA's own out-of-memory message when it refused to compile
  explain: Optional[memory_report.Report] = None  # --explain: the buffers live at the peak


def model_config(section, name: str):
  """ModelConfig from `section.path`/config.json, else `section.preset` (no weights are read)."""
  path, preset = section.path, section.preset
  config_json = os.path.join(path, "config.json") if path else ""
  if config_json and os.path.isfile(config_json):
    try:
      with open(config_json) as f:
        return config_from_hf(json.load(f))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ValueError(f"{name}.path={path!r}: config.json is not a model config ({e})") from None
  if preset:
    if preset not in PRESETS:
      raise ValueError(
          f"{name}.preset={preset!r} is not a preset; choose one of " + ", ".join(PRESETS)
      )
    return get_preset(preset)
  raise ValueError(
      f"{name}.path={path!r} has no config.json and {name}.preset is empty: a plan "
      "needs one of them (no weights are read)"
  )


def _abstract_params(model, mesh, rules):
  shapes = models.param_shapes(model)
  shardings = sharding.tree_shardings(mesh, models.logical_axes(model), rules, shapes=shapes)
  params = jax.tree.map(
      lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes, shardings
  )
  return params, shardings


def abstract_run(config, devices) -> train.Run:
  """What `train.build` makes, with ShapeDtypeStructs for parameters and the kernels built for the
  devices' platform (Mosaic for TPU). Validates the config (paths are not needed)."""
  config = validate(config, num_devices=len(devices), mode="train", check_paths=False)
  if config.teachers:
    raise ValueError(
        f"teachers ({', '.join(config.teachers)}): a plan compiles one teacher's step; plan the "
        "largest as `teacher` (teacher.path or teacher.preset, teachers empty)"
    )
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = config.sharding_rules
  scan = run_config.scan_layers(config, devices[0].platform)
  student = models.build(
      model_config(config.student, "student"), models.DTYPES[config.student.dtype], scan
  )
  params, param_shardings = _abstract_params(student, mesh, rules)
  teacher = teacher_params = None
  g = config.gkd
  if g.divergence_weight > 0 or g.seq_kd:
    teacher = models.build(
        model_config(config.teacher, "teacher"), models.DTYPES[config.teacher.dtype], scan
    )
    teacher_params, _ = _abstract_params(teacher, mesh, rules)
    sv, tv = student.config.vocab_size, teacher.config.vocab_size
    if sv != tv:
      raise ValueError(
          f"teacher vocabulary ({tv}) differs from the student's ({sv}): "
          "distillation needs one shared vocabulary"
      )
  eos = student.config.eos_id
  settings = gkd.GKDSettings.from_config(
      config,
      eos_id=None if eos is None else (eos,),
      layout=train.divergence_layout(mesh, rules, student.config.vocab_size),
  )
  settings = dataclasses.replace(settings, kernel_platform=devices[0].platform)
  source = (
      teacher_sources.NoTeacher()
      if teacher is None
      else teacher_sources.Live(teacher_sources.Teacher("", teacher, teacher_params))
  )
  return train.Run(config, mesh, None, student, params, param_shardings, source, settings)


# XLA:TPU refuses programs that do not fit; its message says how much they need.
_OOM = (
    re.compile(r"Used ([\d.]+)([KMGT]?) of [\d.]+[KMGT]? hbm"),
    re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM"),
)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _per_device_bytes(args) -> int:
  """Bytes of one device's shards of abstract arguments (ShapeDtypeStructs with shardings)."""
  total = 0
  for x in jax.tree.leaves(args):
    if not isinstance(x, jax.ShapeDtypeStruct):
      continue  # e.g. the model (a static argument)
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    size = 1
    for d in shape:
      size *= d
    total += size * getattr(x.dtype, "itemsize", 8)
  return total


def _compile(jitted, args, static=None, dump=None, vocab=()) -> StepPlan:
  start = time.perf_counter()
  try:
    compiled = jitted.lower(*args, **(static or {})).compile(**memory_report.compile_options(dump))
  except Exception as e:  # pylint: disable=broad-except
    match = next((m for m in (r.search(str(e)) for r in _OOM) if m), None)
    if match is None:
      raise
    needed = int(float(match.group(1)) * _UNITS[match.group(2)])
    arg = _per_device_bytes(args)
    temporaries_only = "temporaries" in match.re.pattern
    return StepPlan(
        argument_bytes=arg,
        temp_bytes=needed if temporaries_only else None,
        peak_bytes=arg + needed if temporaries_only else needed,
        compile_s=time.perf_counter() - start,
        error=str(e).strip().splitlines()[0][:300],
    )
  elapsed = time.perf_counter() - start
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  arg, out = mem.argument_size_in_bytes, mem.output_size_in_bytes
  alias, temp = mem.alias_size_in_bytes, mem.temp_size_in_bytes
  return StepPlan(
      arg,
      out,
      alias,
      temp,
      arg + out - alias + temp,
      cost.get("flops"),
      cost.get("bytes accessed"),
      elapsed,
      explain=memory_report.explain(dump, vocab_sizes=vocab) if dump else None,
  )


def plan_steps(config, devices, only=STEPS, explain=False) -> dict[str, StepPlan]:
  """{program name: StepPlan} for the config on `devices` (e.g. a TPU topology's); `explain`: with
  each program's buffers live at its peak (gkd_jax/memory_report.py)."""
  run = abstract_run(config, devices)
  steps = programs.compile_steps(run)
  repl = sharding.replicated(run.mesh)
  key = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=repl)
  c = config
  eval_batch = programs.abstract_batch(run, c.eval.batch_size)
  jobs = {
      "train_step": (
          steps.train_step,
          (
              steps.abstract_state,
              run.teacher_params,
              programs.abstract_batch(run, c.train.batch_size),
              rng,
          ),
      ),
      "eval_step": (steps.eval_step, (run.params, run.teacher_params, eval_batch)),
      "sampler": (
          evaluation._decode,  # pylint: disable=protected-access
          (
              run.student,
              run.params,
              eval_batch["prompt_tokens"],
              eval_batch["prompt_mask"],
              rng,
              jax.ShapeDtypeStruct((), jnp.float32, sharding=repl),
          ),  # temperature
          dict(
              max_new_tokens=c.eval.max_new_tokens,
              eos_id=run.settings.eos_id,
              activations=gkd.activation_sharding(run.settings, c.eval.batch_size),
          ),
      ),
  }
  out = {}
  vocab = memory_report.vocab_shards(run.student.config.vocab_size, run.mesh)
  for name in only:
    jitted, args, *static = jobs[name]
    with memory_report.dump_dir(explain) as dump:
      out[name] = _compile(jitted, args, *static, dump=dump, vocab=vocab)
  return out


def _knobs(config) -> list[tuple[str, dict, tuple]]:
  """(description, {dotted field: value}, programs affected) of changes that lower memory."""
  config = run_config.from_config(config)
  out = []
  remat = config.train.remat  # "auto" plans without remat (no memory limit is known)
  if remat in (False, "auto", "none"):  # keeps the matmul outputs: less recompute than True
    out.append(("train.remat='save_dots'", {"train.remat": "save_dots"}, ("train_step",)))
  if remat is not True and remat != "full":
    out.append(("train.remat=True", {"train.remat": True}, ("train_step",)))
  m = config.mesh
  if m.data > 1:
    out.append((f"mesh data={m.data} folded into fsdp", {"mesh.data": 1, "mesh.fsdp": -1}, STEPS))
  b, k = config.train.batch_size, config.optim.grad_accum_steps
  if b % 2 == 0:
    out.append(
        (
            f"train.batch_size={b // 2} with optim.grad_accum_steps={2 * k} (same tokens per "
            "update; train.num_steps counts micro-steps, so double it too)",
            {"train.batch_size": b // 2, "optim.grad_accum_steps": 2 * k},
            ("train_step",),
        )
    )
  if config.eval.batch_size % 2 == 0:
    out.append(
        (
            f"eval.batch_size={config.eval.batch_size // 2}",
            {"eval.batch_size": config.eval.batch_size // 2},
            ("eval_step", "sampler"),
        )
    )
  return out


def _with(config, changes):
  new = copy.deepcopy(config)  # keeps field types (train.remat takes a bool or "auto")
  for dotted, value in changes.items():
    group, field = dotted.split(".")
    new[group][field] = value
  return new


def replan_knobs(config, devices, failing, hbm) -> list[dict]:
  """Re-plans the failing programs under each knob: what it would change and whether it fits."""
  out = []
  for description, changes, affects in _knobs(config):
    touched = [s for s in failing if s in affects]
    if not touched:
      continue
    new = _with(config, changes)
    try:
      validate(new, num_devices=len(devices), mode="train", check_paths=False)
    except ValueError:
      continue  # e.g. a halved batch no longer divides the mesh
    plans = plan_steps(new, devices, only=touched)
    out.append(
        {
            "knob": description,
            "steps": {s: p.peak_bytes for s, p in plans.items()},
            "fits": all(p.error is None and p.peak_bytes <= hbm for p in plans.values()),
        }
    )
  return out


def _gib(x) -> str:
  return "      -" if x is None else f"{x / 2**30:7.2f}"


def format_table(plans: dict[str, StepPlan], hbm: int) -> str:
  lines = [
      "  program     args GiB  out GiB  alias GiB  temp GiB  peak GiB  headroom GiB  fits  "
      "compile s      TFLOPs   GB accessed"
  ]
  for name, p in plans.items():
    fits = p.error is None and p.peak_bytes <= hbm
    flops = "-" if p.flops is None else f"{p.flops / 1e12:.3f}"
    moved = "-" if p.bytes_accessed is None else f"{p.bytes_accessed / 1e9:.2f}"
    lines.append(
        f"  {name:<10}  {_gib(p.argument_bytes)}  {_gib(p.output_bytes)}    "
        f"{_gib(p.alias_bytes)}   {_gib(p.temp_bytes)}   {_gib(p.peak_bytes)}       "
        f"{_gib(hbm - p.peak_bytes)}  {'yes' if fits else ' NO'}  {p.compile_s:9.1f}  "
        f"{flops:>10}  {moved:>12}"
    )
    if p.error:
      lines.append(f"    XLA: {p.error}")
  return "\n".join(lines)


def plan(
    config,
    topology: str,
    *,
    as_json: bool = False,
    replan: bool = True,
    config_name: str = "",
    explain: bool = False,
    only=STEPS,
) -> tuple[int, dict]:
  """Prints the plan of the programs `only`; returns (exit code 0 fits / 1 does not, the JSON
  summary). `explain`: and where each program's memory goes (gkd_jax/memory_report.py)."""
  devices = tpu_topology.tpu_devices(topology)  # ValueError (bad name) / LibtpuMissing
  gen, _ = tpu_topology.parse(topology)
  hbm = tpu_topology.chip_info(gen)["hbm_bytes"]
  plans = plan_steps(config, devices, only=only, explain=explain)
  failing = [s for s, p in plans.items() if p.error is not None or p.peak_bytes > hbm]
  mesh = sharding.make_mesh(run_config.from_config(config).mesh, devices)
  print(
      f"gkd-jax plan: {config_name or 'config'} on {topology} "
      f"({tpu_topology.topology_name(topology)}): {len(devices)} devices "
      f"({devices[0].device_kind}), {hbm / 2**30:.0f} GiB HBM each; mesh "
      + " ".join(f"{a}={n}" for a, n in mesh.shape.items())
  )
  print(format_table(plans, hbm))
  print("  " + COST_NOTE)
  for name, p in plans.items():
    if explain:
      print(f"  {name}: where the memory goes\n" + memory_report.format_report(p.explain))
  knobs = replan_knobs(config, devices, failing, hbm) if failing and replan else []
  if failing:
    print(f"  does NOT fit: {', '.join(failing)}")
    for k in knobs:
      peaks = ", ".join(f"{s} peak {v / 2**30:.2f} GiB" for s, v in k["steps"].items())
      print(f"    {k['knob']}: {peaks} -> {'fits' if k['fits'] else 'still does not fit'}")
  else:
    print(
        f"  fits: smallest headroom "
        f"{min(hbm - p.peak_bytes for p in plans.values()) / 2**30:.2f} GiB"
    )
  summary = {
      "topology": topology,
      "num_devices": len(devices),
      "device_kind": devices[0].device_kind,
      "hbm_bytes": hbm,
      "fits": not failing,
      "steps": {s: dataclasses.asdict(p) for s, p in plans.items()},
      "knobs": knobs,
  }
  if as_json:
    print(json.dumps(summary))
  return (1 if failing else 0), summary


def main(
    config, topology: Optional[str], as_json: bool, config_name: str = "", explain: bool = False
) -> int:
  """The `gkd-jax plan` command: exit code (2 with one line on stderr on bad input)."""
  import sys  # pylint: disable=import-outside-toplevel

  try:
    if not topology:
      raise ValueError("plan needs --topology (e.g. v5p-64, v6e-8, v5litepod-16, v5p:4x4x2)")
    tpu_topology.parse(topology)
    return plan(config, topology, as_json=as_json, config_name=config_name, explain=explain)[0]
  except tpu_topology.LibtpuMissing as e:
    print(f"gkd-jax plan: error: {e}", file=sys.stderr)
    return 2
  except (ValueError, FileNotFoundError) as e:
    print(f"gkd-jax plan: error: {e}", file=sys.stderr)
    return 2


__all__ = ["StepPlan", "abstract_run", "main", "plan", "plan_steps"]
