"""Where a compiled program's memory goes: the buffers live at its peak, grouped for a reader.

  compiled = lowered.compile(compiler_options=xla_dump.dump_options(dump_dir))
  report = explain(dump_dir, "jit_train_step", vocab_sizes=(256000,))
  print(format_report(report, top=15))

`gkd-jax plan --explain` prints one per program. The numbers are XLA's own (gkd_jax/xla_dump.py):
the live range of every value (the live-range dump) and where each lives (the buffer assignment)
give the step at which the most device memory is live, and the values live there. Only device memory (memory space 0, HBM) is counted; the values that
share bytes with another live value (in-place updates, a donated argument reused for an output) are
counted once. Each buffer is then put in one group by the first rule that holds (`category`):

  student params / teacher params / optimizer state / arguments (other)
      an entry parameter, by its pytree path (`state.params`, `params`: the student's;
      `teacher_params`; `opt_state`).
  gathered student|teacher weights
      the output of an all-gather (or of a copy/convert of one) whose input traces back, through
      copies, converts, bitcasts, slices, fusions of that one array, a loop's or a branch's
      parameter, to one of those parameters: FSDP-sharded weights made whole for a matmul.
  student|teacher weight copies
      the same trace without an all-gather (e.g. a bf16 copy of an f32 weight).
  KV cache
      not under differentiation (a scan over layers' stacked residuals are), an array of rank 4
      or more that is a while loop's own value (its carry), a loop body's parameter, or, made
      under the sampler's name stack, enters a loop's carry: the decode loop's
      (and a scanned prefill's) caches, [B, K, S, Dh] per layer or [L, B, K, S, Dh] stacked; or a
      value made inside a function of KV_CACHE_FRAMES (the prefill's and decode step's writes).
  sampler loop state (tokens, logits)
      the rest of the sampler's while loops' carry (a scan over layers is a loop too: its values
      fall to the rules below).
  logits-sized
      a buffer whose last dimension is a vocabulary size given (`vocab_sizes`), or a shard of one.
  backward (gradients, temporaries)
      made under `transpose(jvp(...))` in jax's name stack: the backward pass.
  teacher forward
      made inside a Python function of TEACHER_FRAMES (the teacher is scored inside the student's
      loss, so the name stack alone does not tell them apart).
  student forward (kept for backward)
      made under `jvp(...)`, not transposed: forward values still alive at the peak, i.e. saved for
      the backward pass.
  sampler (other) / model forward (no gradient) / outputs
      made under the sampler's name stack (`_sample`, `while`) / by code in gkd_jax/models/ outside
      any gradient (eval) / in an output allocation.
  A copy or bitcast without a name stack (XLA's prefetches) is grouped like the value it moves.
  unclassified
      anything else: the report does not guess.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
from typing import Iterator, Optional, Sequence

from gkd_jax import xla_dump

# Functions (Python stack frames) inside which the teacher, not the student, is run (gkd_jax/gkd.py).
TEACHER_FRAMES = ("_live_divergence_term",)
# Functions of gkd_jax/sampling.py that write the KV cache (prefill, decode step, scanned decode).
KV_CACHE_FRAMES = ("to_cache", "update_fn", "update_scan_fn")
# Ops a weight passes through on its way from a parameter to a matmul, unchanged in content.
_THROUGH = {
    "convert", "copy", "copy-start", "copy-done", "bitcast", "reshape", "transpose", "slice",
    "dynamic-slice", "get-tuple-element", "fusion", "all-gather", "all-gather-start",
    "all-gather-done", "async-collective-start", "async-collective-done", "async-start",
    "async-done", "collective-permute", "collective-permute-start", "collective-permute-done",
    "optimization-barrier", "tuple",
}  # fmt: skip
_GATHERS = ("all-gather", "async-collective")
# Ops that only move a value (XLA gives them no name stack of their own).
_MOVES = {
    "copy", "copy-start", "copy-done", "bitcast", "get-tuple-element", "collective-permute",
    "collective-permute-start", "collective-permute-done", "reshape", "transpose",
}  # fmt: skip
_MAX_HOPS = 24


@dataclasses.dataclass(frozen=True)
class Buffer:
  """One value live at the peak, in device memory."""

  size: int  # bytes per device (the buffer assignment's, padding included)
  shape: str  # e.g. "bf16[8,4096,256]"
  category: str
  instruction: str  # the HLO instruction that makes it
  opcode: str
  what: str  # an entry parameter's pytree path, else the op's jax name stack
  source: str  # innermost gkd_jax frame, "file.py:line function" ("" when none)


@dataclasses.dataclass(frozen=True)
class Report:
  module: str
  peak_at: str  # the instruction scheduled at the peak, and its name stack
  buffers: list  # [Buffer], the largest (`keep` of explain), largest first
  groups: dict  # {category: bytes}, largest first
  counts: dict  # {category: number of buffers}
  temp_allocation: int  # bytes of the buffer assignment's temporaries in device memory
  live_bytes: int  # all buffers live at the peak
  count: int  # how many


def _owner(path: str) -> Optional[str]:
  if path.startswith("teacher_params"):
    return "teacher"
  if path.startswith(("state.params", "params")):
    return "student"
  return None


def param_category(path: str) -> str:
  """The group of an entry parameter from its pytree path (jax writes it as the op_name)."""
  owner = _owner(path)
  if owner:
    return f"{owner} params"
  if "opt_state" in path:
    return "optimizer state"
  return "arguments (other)"


def _operand_of_parameter(hlo: xla_dump.Hlo, inst: xla_dump.Instruction) -> Optional[str]:
  """The caller's operand that a (non-entry) computation's parameter stands for, if one caller."""
  calls = hlo.callers.get(inst.computation, [])
  if len(calls) != 1:
    return None
  caller, offset = hlo.instructions.get(calls[0][0]), calls[0][1]
  if caller is None or offset + inst.parameter >= len(caller.operands):
    return None
  return caller.operands[offset + inst.parameter]


def trace_weight(hlo: xla_dump.Hlo, name: str) -> tuple[Optional[str], bool]:
  """(the entry parameter's pytree path a value is a copy of, whether an all-gather is on the way).

  Follows the single array operand back through content-preserving ops; a tuple index is followed
  into the tuple (a loop's carry, a branch's operands). None when the trace forks or ends elsewhere.
  """
  gathered, index = False, None
  for _ in range(_MAX_HOPS):
    inst = hlo.instructions.get(name)
    if inst is None:
      return None, gathered
    if inst.opcode == "parameter":
      if inst.computation == hlo.entry:
        return (inst.op_name if index is None else None), gathered
      name = _operand_of_parameter(hlo, inst)
      continue
    if inst.opcode not in _THROUGH:
      return None, gathered
    gathered |= inst.opcode.startswith(_GATHERS)
    if inst.opcode == "get-tuple-element":
      name, index = inst.operands[0], inst.index
      continue
    if inst.opcode == "tuple" and index is not None:
      if index >= len(inst.operands):
        return None, gathered
      name, index = inst.operands[index], None
      continue
    arrays = [
        o
        for o in inst.operands
        if o in hlo.instructions
        and not hlo.instructions[o].scalar
        and hlo.instructions[o].opcode != "constant"
    ]
    if len(arrays) != 1 and not inst.opcode.endswith(("-done", "-start")):
      return None, gathered
    name = (arrays or inst.operands)[0]
  return None, gathered


def _last_dim(shape: str) -> Optional[int]:
  m = re.search(r"\[(?:[\d,]*,)?(\d+)\]$", shape)
  return int(m.group(1)) if m else None


def _rank(shape: str) -> int:
  m = re.fullmatch(r"\w+\[([\d,]*)\]", shape)
  return len(m.group(1).split(",")) if m and m.group(1) else 0


def _loop_inputs(hlo: xla_dump.Hlo) -> frozenset:
  """Instructions whose values enter a while loop's carry (through its operand tuple or copies)."""
  cached = hlo.__dict__.get("_loop_inputs")
  if cached is None:
    names = set()
    for inst in hlo.instructions.values():
      if inst.opcode != "while" or not inst.operands:
        continue
      carry = hlo.instructions.get(inst.operands[0])
      todo = list(carry.operands) if carry is not None and carry.opcode == "tuple" else []
      for _ in range(4):  # through copies and bitcasts XLA puts in between
        names.update(todo)
        todo = [
            o
            for n in todo
            if n in hlo.instructions and hlo.instructions[n].opcode in _MOVES
            for o in hlo.instructions[n].operands[:1]
        ]
    cached = hlo.__dict__["_loop_inputs"] = frozenset(names)
  return cached


def _in_loop(hlo: xla_dump.Hlo, inst: xla_dump.Instruction) -> bool:
  return inst.opcode == "while" or (
      inst.opcode == "parameter"
      and any(
          hlo.instructions[c].opcode == "while" for c, _ in hlo.callers.get(inst.computation, ())
      )
  )


def _origin(hlo: xla_dump.Hlo, inst: xla_dump.Instruction) -> xla_dump.Instruction:
  """The instruction whose value `inst` only moves (a copy or bitcast with no name stack of its own:
  XLA's prefetches and layout changes), so that it is grouped like what it moves."""
  for _ in range(_MAX_HOPS):
    if inst.op_name or inst.opcode not in _MOVES or not inst.operands:
      return inst
    inst = hlo.instructions.get(inst.operands[0], inst)
  return inst


def category(
    hlo: xla_dump.Hlo, inst: xla_dump.Instruction, shape: str, kind: str, vocab_sizes=()
) -> str:
  """The group of the value an instruction makes (the rules in the module docstring, in order)."""
  if inst.opcode == "parameter" and inst.computation == hlo.entry:
    return param_category(inst.op_name)
  path, gathered = trace_weight(hlo, inst.name)
  owner = _owner(path or "")
  if owner:
    return f"gathered {owner} weights" if gathered else f"{owner} weight copies"
  origin = _origin(hlo, inst)
  # A scan over layers (scan_layers) is a while loop too: under differentiation (jvp/transpose in
  # the name stack) its stacked values are the forward's residuals or the backward's temporaries,
  # not decode state (the sampler never runs under differentiation).
  grad = "jvp(" in origin.op_name or "transpose(" in origin.op_name
  sampler = "_sample" in origin.op_name or "/while/" in origin.op_name
  in_loop = not grad and (_in_loop(hlo, inst) or _in_loop(hlo, origin))
  if _rank(shape) >= 4 and (in_loop or (sampler and inst.name in _loop_inputs(hlo))):
    return "KV cache"
  if in_loop:
    return "sampler loop state (tokens, logits)"
  if _last_dim(shape) in vocab_sizes:
    return "logits-sized [..., vocab]"
  name_stack, functions = origin.op_name, {
      f.rsplit(".", 1)[-1] for _, f, _ in hlo.stack(origin.frame)
  }
  if functions & set(KV_CACHE_FRAMES):
    return "KV cache"
  if "transpose(jvp(" in name_stack:
    return "backward (gradients, temporaries)"
  if functions & set(TEACHER_FRAMES):
    return "teacher forward"
  if "jvp(" in name_stack:
    return "student forward (kept for backward)"
  if "_sample" in name_stack or "/while/" in name_stack:
    return "sampler (other)"
  if any("/gkd_jax/models/" in f for f, _, _ in hlo.stack(origin.frame)):
    return "model forward (no gradient)"
  if kind == "output":
    return "outputs"
  return "unclassified"


def _source(hlo: xla_dump.Hlo, frame: int) -> str:
  for file, function, line in hlo.stack(frame):
    if "/gkd_jax/" in file:
      return f"{file.rsplit('/gkd_jax/', 1)[1]}:{line} {function}"
  return ""


def _device_chunks(values: dict, allocations: dict, ranges: dict) -> dict:
  """{(allocation, offset, size): [(first, last) step]} of the values in device memory, the
  ranges of values that share one chunk merged where they overlap in time (an in-place update
  and its operand are one buffer; a chunk reused later is another)."""
  chunks: dict[tuple[int, int, int], list[list[int]]] = {}
  for name, value in values.items():
    if allocations[value.allocation].color != 0 or name not in ranges:
      continue
    chunks.setdefault((value.allocation, value.offset, value.size), []).append(list(ranges[name]))
  for key, spans in chunks.items():
    spans.sort()
    merged = [spans[0]]
    for s, e in spans[1:]:
      if s <= merged[-1][1]:
        merged[-1][1] = max(merged[-1][1], e)
      else:
        merged.append([s, e])
    chunks[key] = [tuple(m) for m in merged]
  return chunks


def peak_step(values: dict, allocations: dict, ranges: dict) -> int:
  """The schedule step at which the most device memory is live (the buffer assignment's sizes)."""
  chunks = _device_chunks(values, allocations, ranges)
  last = max((e for spans in chunks.values() for _, e in spans), default=0)
  delta = [0] * (last + 2)
  for (_, _, size), spans in chunks.items():
    for s, e in spans:
      delta[s] += size
      delta[e + 1] -= size
  best, best_step, live = -1, 0, 0
  for step, d in enumerate(delta):
    live += d
    if live > best:
      best, best_step = live, step
  return best_step


def peak_buffers(
    hlo: xla_dump.Hlo, values: dict, allocations: dict, live: Sequence[str], vocab=()
) -> list[Buffer]:
  """The values `live` that are in device memory, each set of shared bytes once, largest first."""
  taken: dict[int, list[tuple[int, int]]] = {}  # allocation -> [(start, end)] counted
  out = []
  for name in sorted(live, key=lambda n: -values[n].size if n in values else 0):
    value = values.get(name)
    if value is None:
      raise xla_dump.DumpError(f"live value {name} is not in the buffer assignment")
    alloc = allocations[value.allocation]
    if alloc.color != 0:
      continue  # on-chip memory (VMEM, SMEM), not HBM
    start, end = value.offset, value.offset + value.size
    spans = taken.setdefault(alloc.index, [])
    if any(s < end and start < e for s, e in spans):
      continue  # shares bytes with a value already counted
    spans.append((start, end))
    inst = hlo.instructions.get(name.split("{", 1)[0])
    if inst is None:
      raise xla_dump.DumpError(f"live value {name} is not an instruction of the optimized HLO")
    cat = category(hlo, inst, value.shape, alloc.kind, vocab)
    out.append(
        Buffer(
            value.size, value.shape, cat, name, inst.opcode, inst.op_name, _source(hlo, inst.frame)
        )
    )
  return sorted(out, key=lambda b: -b.size)


@contextlib.contextmanager
def dump_dir(enabled: bool) -> Iterator[Optional[str]]:
  """A fresh directory for one compile's dump, or None when not `enabled`. Removed after, unless
  $GKD_EXPLAIN_DUMP_DIR names a directory to keep the dumps in (to re-read them without compiling
  again: a 9B program takes minutes)."""
  if not enabled:
    yield None
    return
  keep = os.environ.get("GKD_EXPLAIN_DUMP_DIR")
  if keep:
    os.makedirs(keep, exist_ok=True)
    yield tempfile.mkdtemp(prefix="dump_", dir=keep)
    return
  with tempfile.TemporaryDirectory(prefix="gkd_explain_") as d:
    yield d


def compile_options(dump: Optional[str]) -> dict:
  """Keyword arguments of `lowered.compile` that dump into `dump` (none when it is None)."""
  return {"compiler_options": xla_dump.dump_options(dump)} if dump else {}


def vocab_shards(vocab_size: int, mesh) -> tuple[int, ...]:
  """Last dimensions a logits buffer can have on `mesh`: the vocabulary, or its shard over the
  "tensor" axis (the vocab-parallel divergence)."""
  n = dict(getattr(mesh, "shape", {})).get("tensor", 1)
  return tuple(sorted({vocab_size, vocab_size // n}))


def explain(
    dump_dir: str, module: str = "", vocab_sizes: Sequence[int] = (), keep: int = 40
) -> Report:
  """The Report of the last compile of `module` (e.g. "jit_train_step") dumped in `dump_dir`;
  it lists the `keep` largest buffers, its group totals count them all."""
  files = xla_dump.find_module(dump_dir, module)
  with open(files["hlo"]) as f:
    hlo = xla_dump.parse_hlo(f.read())
  with open(files["buffer_assignment"]) as f:
    values, allocations = xla_dump.parse_buffer_assignment(f.read())
  with open(files["live_range"]) as f:
    schedule, ranges = xla_dump.parse_live_ranges(f.read())
  step = peak_step(values, allocations, ranges)
  live = [n for n, (s, e) in ranges.items() if s <= step <= e and n in values]
  buffers = peak_buffers(hlo, values, allocations, live, tuple(vocab_sizes))
  at = schedule[step] if step < len(schedule) else f"step {step}"
  groups: dict[str, int] = {}
  counts: dict[str, int] = {}
  for b in buffers:
    groups[b.category] = groups.get(b.category, 0) + b.size
    counts[b.category] = counts.get(b.category, 0) + 1
  at_inst = hlo.instructions.get(at)
  return Report(
      module=module or hlo.entry,
      peak_at=f"{at} ({at_inst.op_name})" if at_inst and at_inst.op_name else at,
      buffers=buffers[:keep],
      groups=dict(sorted(groups.items(), key=lambda kv: -kv[1])),
      counts=counts,
      temp_allocation=sum(a.size for a in allocations.values() if a.kind == "temp" and not a.color),
      live_bytes=sum(b.size for b in buffers),
      count=len(buffers),
  )


def _gib(x: int) -> str:
  return f"{x / 2**30:8.3f}"


def format_report(report: Optional[Report], top: int = 15, indent: str = "  ") -> str:
  """Group totals, then the `top` largest buffers, in GiB per device."""
  if report is None:
    return f"{indent}no buffer report: XLA did not compile the program (its message is above)"
  lines = [
      f"{indent}live at the peak ({report.peak_at[:120]}): {report.live_bytes / 2**30:.3f} GiB "
      f"in {report.count} buffers; buffer assignment's temporaries "
      f"{report.temp_allocation / 2**30:.3f} GiB",
      f"{indent}     GiB  share  buffers  group",
  ]
  total = max(report.live_bytes, 1)
  for name, size in report.groups.items():
    count = report.counts.get(name, 0)
    lines.append(f"{indent}{_gib(size)}  {100 * size / total:4.0f}%  {count:7d}  {name}")
  lines.append(f"{indent}     GiB  shape / group / op / what / source (largest {top} buffers)")
  for b in report.buffers[:top]:
    lines.append(
        f"{indent}{_gib(b.size)}  {b.shape}  {b.category}  {b.opcode}  {b.what[:90]}"
        + (f"  {b.source}" if b.source else "")
    )
  return "\n".join(lines)


__all__ = [
    "Buffer",
    "Report",
    "KV_CACHE_FRAMES",
    "TEACHER_FRAMES",
    "category",
    "compile_options",
    "dump_dir",
    "explain",
    "format_report",
    "param_category",
    "peak_buffers",
    "peak_step",
    "trace_weight",
    "vocab_shards",
]
