"""Checked config groups: a frozen dataclass whose fields carry their own range checks.

    @dataclasses.dataclass(frozen=True)
    class SamplingConfig(Group):
      GROUP = "sampling"
      top_p: float = field(1.0, number(0, 1, lo_open=True))

Constructing a group checks every field (in declaration order) and raises one ValueError naming the
user's dotted field, its value and what is allowed: "sampling.top_p=0.0 is outside (0, 1]".
`Group.read(node)` builds a group from the matching `ml_collections` group (or any mapping).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Optional

# check(value) -> None when the value is allowed, else the end of the error message.
Check = Callable[[Any], Optional[str]]


def field(default=dataclasses.MISSING, check: Optional[Check] = None, **kw):
  """A dataclass field with a range check."""
  return dataclasses.field(default=default, metadata={"check": check}, **kw)


def number(lo=None, hi=None, lo_open=False, hi_open=False, integer=False) -> Check:
  """A numeric range; booleans are refused (True is an int to Python, not to a config)."""

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


def integer(lo=None, hi=None) -> Check:
  return number(lo, hi, integer=True)


def choice(*options) -> Check:
  """One of `options`; True/False match only themselves (not 1/0, which `in` would accept)."""

  def same(v, o):
    return v is o if isinstance(v, bool) or isinstance(o, bool) else v == o

  def check(v):
    if not any(same(v, o) for o in options):
      return "is not one of " + ", ".join(repr(o) if o == "" else str(o) for o in options)
    return None

  return check


def boolean(v) -> Optional[str]:
  return None if isinstance(v, bool) else "must be True or False"


def string(v) -> Optional[str]:
  return None if isinstance(v, str) else "must be a string"


def fail(dotted: str, value: Any, message: str):
  raise ValueError(f"{dotted}={value!r} {message}")


@dataclasses.dataclass(frozen=True)
class Group:
  """Base of the checked groups. `GROUP` is the group's dotted prefix in the user's config."""

  GROUP: ClassVar[str] = ""

  @property
  def prefix(self) -> str:
    return self.GROUP

  def __post_init__(self):
    for f in dataclasses.fields(self):
      check = f.metadata.get("check")
      value = getattr(self, f.name)
      message = check(value) if check else None
      if message:
        fail(self.dotted(f.name), value, message)

  def dotted(self, name: str) -> str:
    return f"{self.prefix}.{name}" if self.prefix else name

  @classmethod
  def read(cls, node, prefix: Optional[str] = None, **extra):
    """The group from its config node; a field missing from the node is named with its path."""
    if isinstance(node, cls):
      return node
    prefix = cls.GROUP if prefix is None else prefix
    values = {}
    for f in dataclasses.fields(cls):
      if f.name in extra or not f.init:
        continue
      try:
        values[f.name] = node[f.name]
      except (KeyError, TypeError, AttributeError):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        raise ValueError(f"{dotted} is missing from the config (see configs/default.py)") from None
    return cls(**values, **extra)
