"""Where a fused divergence's tokens and vocabulary live on a device mesh.

  layout = Layout(mesh, vocab_axis="tensor", token_axes=("data", "fsdp"))

``token_axes``: the mesh axes the token axis N of the hidden states is sharded over (each token
shard streams its own tokens, nothing crosses those axes in the forward pass). ``vocab_axis``: the
axis the unembeddings' vocabulary is sharded over (vocab-parallel: only [N] statistics cross it).
All `shard_map` code of the kernels reads its partition specs from here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class Layout:
  mesh: Mesh
  vocab_axis: Optional[str] = None
  token_axes: tuple[str, ...] = ()  # a list (or None) is converted to a tuple on construction

  def __post_init__(self) -> None:
    object.__setattr__(self, "token_axes", tuple(self.token_axes or ()))
    names = self.mesh.axis_names
    if self.vocab_axis is not None and self.vocab_axis not in names:
      raise ValueError(f"vocab_axis={self.vocab_axis!r} is not an axis of the mesh {names}")
    for ax in self.token_axes:
      if ax not in names or ax == self.vocab_axis:
        raise ValueError(
            f"token_axes={self.token_axes!r}: {ax!r} is not a mesh axis other than " "vocab_axis"
        )

  @property
  def token_shards(self) -> int:
    return math.prod(self.mesh.shape[a] for a in self.token_axes)

  @property
  def vocab_shards(self) -> int:
    return 1 if self.vocab_axis is None else self.mesh.shape[self.vocab_axis]

  @property
  def rows(self) -> P:
    """[N, D] hidden states: tokens sharded, hidden replicated."""
    return P(self.token_axes or None, None)

  @property
  def vector(self) -> P:
    """[N] per-token values."""
    return P(self.token_axes or None)

  @property
  def columns(self) -> P:
    """[D, V] unembeddings: vocabulary sharded over vocab_axis (replicated when None)."""
    return P(None, self.vocab_axis)

  def check_tokens(self, n: int) -> None:
    if n % self.token_shards:
      raise ValueError(
          f"{n} tokens are not divisible by the {self.token_shards} shards of "
          f"token_axes={self.token_axes!r}"
      )
