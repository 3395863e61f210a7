"""The model contract: a hashable `Model` (architecture) plus a pure `params` pytree.

    model = build(cfg, dtype=jnp.bfloat16)     # no arrays allocated
    params = init(model, jax.random.key(0))    # nested dict of arrays, layout below
    param_shapes(model)                        # same tree of jax.ShapeDtypeStruct
    logical_axes(model)                        # same tree of PartitionSpec(logical names)
    unembedding(model, params)                 # [D,V] (embed.T when tied)
    stack_layers(params) / unstack_layers(params)   # per-layer form <-> scanned form

`Model` is a frozen dataclass (config, dtype, scan_layers) and so a valid static argument of
`jax.jit`; `model.graphdef` is the NNX graph definition and `model.bind(params)` merges it with a
params tree (do that inside `jit`: it is free at run time). The params tree (exactly `nnx.state(module,
nnx.Param).to_pure_dict()`), with D=embed_dim, V=vocab, H/K=query/kv heads, Dh=head_dim, F=mlp_dim:

    embed                      [V,D]     (vocab, embed)
    lm_head                    [D,V]     (embed, vocab)          only when tie_embeddings=False
    final_norm/scale           [D]       (embed,)
    layers/{i}/attn_norm/scale [D]       layers is a dict keyed by int layer index 0..L-1
    layers/{i}/attn/q          [D,H,Dh]  (embed, heads, head_dim)
    layers/{i}/attn/k, v       [D,K,Dh]  (embed, kv_heads, head_dim)
    layers/{i}/attn/o          [H,Dh,D]  (heads, head_dim, embed)
    layers/{i}/attn/q_bias     [H,Dh]    k_bias/v_bias [K,Dh]    only when qkv_bias
    layers/{i}/attn/q_norm/scale, k_norm/scale  [Dh]  (head_dim,) only when qk_norm
    layers/{i}/post_attn_norm/scale [D]                          only when post_attn_norm
    layers/{i}/mlp_norm/scale  [D]
    layers/{i}/mlp/gate, up    [D,F]     (embed, mlp)
    layers/{i}/mlp/down        [F,D]     (mlp, embed)
    layers/{i}/post_mlp_norm/scale [D]                           only when post_mlp_norm

With `scan_layers=True` (the decoder runs its blocks as one `lax.scan`, see decoder.py) `layers` is
instead one tree of the same names whose every leaf has a leading [L] axis, logical axis `layers`
(never sharded by the default rules: an axis no rule names is replicated), e.g.
layers/attn/q [L,D,H,Dh] (layers, embed, heads, head_dim). `stack_layers` / `unstack_layers`
convert between the two forms (layer i of the stacked form is the per-layer form's `layers/{i}`);
HF and GGUF files stay per-layer (`load_pretrained` / `save_pretrained` convert at the edge).

Norm scales are stored as in HF checkpoints (Gemma: the `w` of x * (1 + w)). Matrices are stored
input-major (x @ W), i.e. transposed relative to torch's nn.Linear weights.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from gkd_jax.models.config import ModelConfig
from gkd_jax.models.decoder import Decoder

Params = Any  # nested dict of arrays
# The parameter/activation dtypes a config may name (`student.dtype`, `teacher.dtype`).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Model:
  """Architecture (config), parameter/activation dtype and the layer form. Hashable: a `jax.jit`
  static arg.

  scan_layers: run the blocks as one scan over params stacked on a leading `layers` axis (compile
  time flat in depth, one layer's weights gathered at a time under FSDP) instead of a Python loop
  over per-layer params (the debugging and parity reference). Both compute the same function.
  """

  config: ModelConfig
  dtype: Any = jnp.float32
  scan_layers: bool = False

  def __post_init__(self):
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype))

  @property
  def graphdef(self):
    return _abstract(self)[0]

  def bind(self, params: Params) -> Decoder:
    """The NNX `Decoder` holding `params` (call inside jit; shares the arrays, no copy)."""
    return nnx.merge(self.graphdef, params)


def _params(model: Model, rng: jax.Array) -> Params:
  """The `Decoder`'s parameters as its own initialisers draw them from `rng`; the scanned form
  stacks the per-layer draws, so one rng gives the same model in both forms."""
  module = Decoder(model.config, model.dtype, nnx.Rngs(params=rng))
  params = nnx.state(module, nnx.Param).to_pure_dict()
  return stack_layers(params) if model.scan_layers else params


@functools.lru_cache(maxsize=64)
def _abstract(model: Model):
  module = nnx.eval_shape(
      lambda: Decoder(model.config, model.dtype, nnx.Rngs(params=0), model.scan_layers)
  )
  graphdef, state = nnx.split(module, nnx.Param)
  return graphdef, state


def build(config: ModelConfig, dtype=jnp.float32, scan_layers: bool = False) -> Model:
  """A `Model` for `config` whose parameters and activations are `dtype` (`scan_layers`: see
  `Model`)."""
  if not isinstance(config, ModelConfig):
    raise TypeError(f"build() needs a ModelConfig, got {type(config).__name__}")
  return Model(config, dtype, bool(scan_layers))


def is_stacked(params: Params) -> bool:
  """Whether `params` has the scanned form (`layers` one tree of [L,...] leaves) rather than the
  per-layer form (`layers` a dict keyed by int layer index)."""
  return not all(isinstance(k, int) for k in params["layers"])


def stack_layers(params: Params) -> Params:
  """The scanned form of per-layer `params` (new [L,...] arrays; other entries shared)."""
  if is_stacked(params):
    raise ValueError("stack_layers: params are already stacked")
  layers = params["layers"]
  if sorted(layers) != list(range(len(layers))):
    raise ValueError(f"stack_layers: layer indices {sorted(layers)} are not 0..L-1")
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(layers[i] for i in range(len(layers))))
  return dict(params, layers=stacked)


def unstack_layers(params: Params) -> Params:
  """The per-layer form of scanned `params` (layer i: every leaf's [i] slice)."""
  if not is_stacked(params):
    raise ValueError("unstack_layers: params are already per-layer")
  stacked = params["layers"]
  num_layers = jax.tree.leaves(stacked)[0].shape[0]
  layers = {i: jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(num_layers)}
  return dict(params, layers=layers)


def params_for(model: Model, params: Params) -> Params:
  """`params` in the form `model` runs (stacked when `model.scan_layers`), converted if needed."""
  if is_stacked(params) == model.scan_layers:
    return params
  return stack_layers(params) if model.scan_layers else unstack_layers(params)


def init(model: Model, rng: jax.Array, shardings: Optional[Any] = None) -> Params:
  """Random parameters, a nested dict of arrays, from the `Decoder`'s own initialisers:
  normal(0, 0.02) matrices and embeddings, zero biases, identity norms (ones; zeros for Gemma's
  (1+w) norms, as HF initialises them).

  shardings: an optional matching tree of `jax.sharding.Sharding`s; each array is then created in
  place with its sharding (one jitted program, no host copy). The values do not depend on it.
  """
  if shardings is None:
    return _init(model, rng)
  return jax.jit(_params, static_argnums=0, out_shardings=shardings)(model, rng)


_init = jax.jit(_params, static_argnums=0)


def param_shapes(model: Model) -> Params:
  """The params tree with `jax.ShapeDtypeStruct` leaves."""
  return _abstract(model)[1].to_pure_dict()


def logical_axes(model: Model) -> Params:
  """The params tree with `PartitionSpec(*logical axis names)` leaves."""
  state = _abstract(model)[1]
  specs = jax.tree.map(
      lambda v: PartitionSpec(*v.get_metadata()["out_sharding"]),
      state,
      is_leaf=lambda x: isinstance(x, nnx.Variable),
  )
  return specs.to_pure_dict()


def unembedding(model: Model, params: Params) -> jax.Array:
  """[D,V] unembedding matrix (embed.T when embeddings are tied); logits = hidden @ it, then the
  final soft-cap `model.config.final_logit_softcap` if set."""
  if model.config.tie_embeddings:
    return params["embed"].T
  return params["lm_head"]


def num_params(model: Model) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(param_shapes(model))))
