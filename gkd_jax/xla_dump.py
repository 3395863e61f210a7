"""Readers of the text files XLA writes for one compiled program (`--xla_dump_to`), as plain data.

  options = dump_options("/tmp/dump")          # compiler_options for `lowered.compile(...)`
  files = find_module(dir, "jit_train_step")   # the optimized module's three files
  schedule, ranges = parse_live_ranges(live_range_txt)    # step -> instruction, value -> steps
  values, allocations = parse_buffer_assignment(ba_txt)    # where each value lives
  hlo = parse_hlo(optimized_hlo_txt)                       # instructions, callers, stack frames

Why dumps: a compiled program's memory analysis gives totals only (arguments, outputs,
temporaries). Which buffers make up the temporaries is written by XLA itself when dumping: the
buffer assignment (`*after_optimizations-buffer-assignment.txt`: every allocation and the values it
holds, at which offset), the live ranges (`*-live-range.txt`: the schedule and the values live at
its peak) and the optimized HLO (`*after_optimizations.txt`: each instruction's opcode, operands and
metadata, i.e. the jax name stack, the Python stack frame, and for entry parameters the argument's
pytree path). XLA:TPU (libtpu) honours the dump options passed per compile, so no environment
variable or private API is needed. The formats are XLA's debug text, not a stable API: every reader
fails with a message that names the file and what it lacked, rather than returning a wrong answer.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Optional

SUFFIXES = {
    "buffer_assignment": "after_optimizations-buffer-assignment.txt",
    "live_range": "after_optimizations-live-range.txt",
    "hlo": "after_optimizations.txt",
}


class DumpError(RuntimeError):
  """An XLA dump is absent or not in the expected form (the message says which file and why)."""


def dump_options(dump_dir: str) -> dict:
  """compiler_options that make XLA write the optimized HLO, buffer assignment and live ranges."""
  return {"xla_dump_to": dump_dir, "xla_dump_hlo_as_text": True}


def find_module(dump_dir: str, module_name: str = "") -> dict[str, str]:
  """{kind: path} of the last optimized module in `dump_dir` whose name contains `module_name`
  (e.g. "jit_train_step"); the module numbers grow with each compile."""
  found = {}
  for kind, suffix in SUFFIXES.items():
    paths = sorted(glob.glob(os.path.join(dump_dir, f"module_*{module_name}*.{suffix}")))
    if not paths:
      raise DumpError(
          f"no *.{suffix} for module {module_name or '(any)'} in {dump_dir}: was the program "
          f"compiled with compiler_options={dump_options(dump_dir)} (XLA writes it then)?"
      )
    found[kind] = paths[-1]
  return found


# ---- live ranges: the schedule and the values live at the peak ----------------------------------


def parse_live_ranges(text: str) -> tuple[list[str], dict[str, tuple[int, int]]]:
  """(the instructions in schedule order, {value "name{index}": (first step, last step) live}).

  The dump also names a peak ("Live ranges at N (peak)") by an accounting of its own, which in a
  Gemma 2 9B->2B train_step lay at a forward all-reduce with 32 GiB live, while the buffer
  assignment's sizes over these ranges reach 54.6 GiB later on (XLA's memory analysis: 56.8). So
  the peak is recomputed from these ranges (gkd_jax/memory_report.py), not read."""
  head = re.search(r"^\s*InstructionSequence:\n", text, re.M)
  body = re.search(r"^\s*BufferLiveRange:\n", text, re.M)
  if head is None or body is None:
    raise DumpError("live-range dump lacks its InstructionSequence or BufferLiveRange section")
  schedule = re.findall(r"^\s+\d+:(\S+)$", text[head.end() : body.start()], re.M)
  ranges = {}
  for line in text[body.end() :].splitlines():
    m = re.match(r"^\s+(\S+):(\d+)-(\d+)$", line)
    if m is None:
      break
    ranges[m.group(1)] = (int(m.group(2)), int(m.group(3)))
  if not ranges:
    raise DumpError("live-range dump has an empty BufferLiveRange section")
  return schedule, ranges


# ---- buffer assignment: allocations and the values in each ---------------------------------------


@dataclasses.dataclass(frozen=True)
class Allocation:
  index: int
  size: int
  kind: str  # "parameter", "output", "temp", "thread-local", "constant", "other"
  color: int  # memory space: 0 is HBM (device memory); others are on-chip (VMEM, SMEM, ...)
  parameter: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Value:
  name: str  # "instruction{shape index}", as the live-range dump names it
  allocation: int
  offset: int
  size: int
  shape: str  # without layout, e.g. "bf16[8,4096,256]"


_ALLOC = re.compile(r"^allocation (\d+): size (\d+), (.*)$")
_VALUE = re.compile(r"^ value: <\d+ (\S+)(?: \(phi\))? @\d+> \(size=(\d+),offset=(\d+)\): (.*)$")


def _kind(attrs: str) -> tuple[str, Optional[int]]:
  m = re.search(r"parameter (\d+)", attrs)
  if m:
    return "parameter", int(m.group(1))
  for key, kind in (
      ("preallocated-temp", "temp"),
      ("thread-local", "thread-local"),
      ("constant", "constant"),
      ("output", "output"),
      ("maybe-live-out", "output"),
  ):
    if key in attrs:
      return kind, None
  return "other", None


def strip_layout(shape: str) -> str:
  """ "bf16[8,128]{1,0:T(8,128)(2,1)}" -> "bf16[8,128]" (tuples keep their element shapes)."""
  return re.sub(r"\{[^{}]*(?:\([^()]*\)[^{}]*)*\}", "", shape).strip()


def parse_buffer_assignment(text: str) -> tuple[dict[str, Value], dict[int, Allocation]]:
  values, allocations, current = {}, {}, None
  for line in text.splitlines():
    m = _ALLOC.match(line)
    if m:
      attrs = m.group(3)
      kind, param = _kind(attrs)
      color = re.search(r"color (\d+)", attrs)
      current = Allocation(
          int(m.group(1)), int(m.group(2)), kind, int(color.group(1)) if color else 0, param
      )
      allocations[current.index] = current
      continue
    m = _VALUE.match(line)
    if m and current is not None:
      name = m.group(1) if m.group(1).endswith("}") else m.group(1) + "{}"  # as live ranges name it
      values[name] = Value(
          name, current.index, int(m.group(3)), int(m.group(2)), strip_layout(m.group(4))
      )
  if not allocations:
    raise DumpError("buffer-assignment dump has no 'allocation N: size S, ...' lines")
  return values, allocations


# ---- optimized HLO: instructions, who calls each computation, Python stack frames ----------------


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  opcode: str
  computation: str
  operands: tuple[str, ...]
  op_name: str = ""  # the jax name stack, or an entry parameter's pytree path
  frame: int = 0  # stack_frame_id (0: none)
  parameter: Optional[int] = None  # parameter(N)
  index: Optional[int] = None  # get-tuple-element's index
  scalar: bool = False  # a rank-0 array (e.g. a loop counter or a slice's start index)


@dataclasses.dataclass
class Hlo:
  instructions: dict[str, Instruction]
  entry: str  # the entry computation's name
  parameters: dict[tuple[str, int], str]  # (computation, number) -> parameter instruction
  callers: dict[
      str, list[tuple[str, int]]
  ]  # computation -> [(calling instruction, operand offset)]
  frames: dict[int, tuple[int, int]]  # stack frame -> (file location, parent frame)
  locations: dict[int, tuple[str, str, int]]  # file location -> (file, function, line)

  def stack(self, frame: int) -> list[tuple[str, str, int]]:
    """(file, function, line) from the innermost call outwards."""
    out, seen = [], set()
    while frame in self.frames and frame not in seen:
      seen.add(frame)
      location, parent = self.frames[frame]
      if location in self.locations:
        out.append(self.locations[location])
      frame = parent
    return out


_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%([\w.-]+) = ")
_CALLS = re.compile(r"\b(body|to_apply|calls|true_computation|false_computation)=%([\w.-]+)")


def _skip_shape(rest: str) -> str:
  """The text after an instruction's shape (tuple shapes nest parentheses)."""
  if not rest.startswith("("):
    return rest.split(" ", 1)[1] if " " in rest else ""
  depth = 0
  for i, ch in enumerate(rest):
    depth += ch == "("
    depth -= ch == ")"
    if depth == 0:
      return rest[i + 1 :].lstrip()
  return ""


def _parse_tables(lines: list[str]) -> tuple[dict, dict]:
  """The FileNames / FunctionNames / FileLocations / StackFrames tables at the module's top."""
  tables, current = {}, None
  for line in lines:
    if re.fullmatch(r"[A-Za-z]+", line.strip()):
      current = tables.setdefault(line.strip(), {})
    elif current is not None and re.match(r"^\d+ ", line):
      key, rest = line.split(" ", 1)
      current[int(key)] = rest
  files = {k: v.strip('"') for k, v in tables.get("FileNames", {}).items()}
  functions = {k: v.strip('"') for k, v in tables.get("FunctionNames", {}).items()}
  locations = {}
  for k, v in tables.get("FileLocations", {}).items():
    f = dict(re.findall(r"(\w+)=(\d+)", v))
    locations[k] = (
        files.get(int(f.get("file_name_id", 0)), "?"),
        functions.get(int(f.get("function_name_id", 0)), "?"),
        int(f.get("line", 0)),
    )
  frames = {}
  for k, v in tables.get("StackFrames", {}).items():
    f = dict(re.findall(r"(\w+)=(\d+)", v))
    frames[k] = (int(f.get("file_location_id", 0)), int(f.get("parent_frame_id", 0)))
  return frames, locations


def parse_hlo(text: str) -> Hlo:
  lines = text.splitlines()
  first = next((i for i, l in enumerate(lines) if _COMPUTATION.match(l)), len(lines))
  frames, locations = _parse_tables(lines[:first])
  instructions, parameters, callers = {}, {}, {}
  entry, computation = "", ""
  for line in lines[first:]:
    m = _INSTRUCTION.match(line)
    if m is None:
      c = _COMPUTATION.match(line)
      if c:
        computation = c.group(2)
        entry = computation if c.group(1) else entry
      continue
    shape_and_rest = line[m.end() :]
    name, rest = m.group(1), _skip_shape(shape_and_rest)
    opcode = rest.split("(", 1)[0]
    args = rest[len(opcode) + 1 :]
    depth, end = 1, len(args)
    for i, ch in enumerate(args):
      depth += (ch == "(") - (ch == ")")
      if depth == 0:
        end = i
        break
    attrs = args[end:]
    op_name = re.search(r'op_name="((?:[^"\\]|\\.)*)"', attrs)
    frame = re.search(r"stack_frame_id=(\d+)", attrs)
    param = int(args[:end]) if opcode == "parameter" and args[:end].isdigit() else None
    index = re.search(r"\bindex=(\d+)", attrs)
    instructions[name] = Instruction(
        name,
        opcode,
        computation,
        tuple(re.findall(r"%([\w.-]+)", args[:end])),
        op_name.group(1).replace("\\'", "'").replace('\\"', '"') if op_name else "",
        int(frame.group(1)) if frame else 0,
        param,
        int(index.group(1)) if index and opcode == "get-tuple-element" else None,
        re.match(r"\w+\[\]", shape_and_rest) is not None,
    )
    if param is not None:
      parameters[(computation, param)] = name
    for key, callee in _CALLS.findall(attrs):  # parameter N of the callee is operand offset + N
      callers.setdefault(callee, []).append(
          (name, {"true_computation": 1}.get(key, 0) + (key == "false_computation") * 2)
      )
    branches = re.search(r"branch_computations=\{([^}]*)\}", attrs)
    for i, callee in enumerate(re.findall(r"%([\w.-]+)", branches.group(1)) if branches else ()):
      callers.setdefault(callee, []).append((name, i + 1))  # operand 0 picks the branch
  if not entry:
    raise DumpError("optimized HLO dump has no ENTRY computation")
  return Hlo(instructions, entry, parameters, callers, frames, locations)


__all__ = [
    "Allocation",
    "DumpError",
    "Hlo",
    "Instruction",
    "Value",
    "dump_options",
    "find_module",
    "parse_buffer_assignment",
    "parse_hlo",
    "parse_live_ranges",
    "strip_layout",
]
