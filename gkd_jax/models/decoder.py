"""One decoder-only transformer in Flax NNX covering Gemma 2/3, Llama 3, Qwen 2/3.

The modules are thin: every parameter is an `nnx.Param` whose `out_sharding` metadata holds its
logical axis names (`eager_sharding=False`, so nothing is placed on a mesh at construction). The
numerics follow transformers (the reference implementation) op by op:

- RMSNorm is computed in float32. Gemma (`norm_scale_plus_one`) multiplies by (1 + w) in float32 and
  casts back; Llama/Qwen cast the normalised input back to the activation dtype, then multiply by w.
- Gemma scales embeddings by sqrt(embed_dim) cast to the activation dtype.
- Attention logits are computed in float32, scaled by `query_pre_attn_scalar**-0.5` (or
  head_dim**-0.5), soft-capped (c * tanh(x / c)) *before* masking, then masked and softmaxed in
  float32; the probabilities are cast back to the activation dtype before multiplying by V.
- Sliding-window layers see a key when 0 <= q_pos - k_pos < sliding_window.
- Q/K norm (Qwen 3, Gemma 3) acts over head_dim after the projection and before RoPE.

Cache-free: `Block.__call__` takes a `kv_fn` that decides what keys/values to attend over (the fresh
ones for `score`, a KV cache for `sample`) so one code path serves scoring, prefill and decode.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from gkd_jax import remat as remat_lib
from gkd_jax.models import matmul, rope
from gkd_jax.models.config import ModelConfig

MASK_VALUE = float(jnp.finfo(jnp.float32).min)

# kv_fn(k_BxKxTxH, v_BxKxTxH) -> (keys to attend over, values to attend over, anything to return)
KVFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, object]]


def _param(rngs: nnx.Rngs, shape, axes, dtype, init: str = "normal") -> nnx.Param:
  if init == "normal":
    value = 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  else:
    value = jnp.zeros(shape, jnp.float32)
  return nnx.Param(value.astype(dtype), out_sharding=tuple(axes), eager_sharding=False)


class RMSNorm(nnx.Module):
  """RMSNorm over the last axis; `plus_one` is Gemma's x * (1 + w) (weights stored as in HF)."""

  def __init__(self, dim: int, axis_name: str, *, eps: float, plus_one: bool, dtype, rngs):
    self.eps = eps
    self.plus_one = plus_one
    self.scale = _param(rngs, (dim,), (axis_name,), dtype, "zeros" if plus_one else "ones")

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    w = self.scale[...]
    if self.plus_one:
      return (y * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
    return w * y.astype(x.dtype)


def softcap(x: jax.Array, cap: Optional[float]) -> jax.Array:
  return x if cap is None else jnp.tanh(x / cap) * cap


class Attention(nnx.Module):
  """Grouped-query attention. q: [D,H,Dh], k/v: [D,K,Dh], o: [H,Dh,D]."""

  def __init__(self, cfg: ModelConfig, sliding: bool, dtype, rngs: nnx.Rngs):
    D, H, K, Dh = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.num_heads, self.num_kv_heads, self.head_dim = H, K, Dh
    self.q = _param(rngs, (D, H, Dh), ("embed", "heads", "head_dim"), dtype)
    self.k = _param(rngs, (D, K, Dh), ("embed", "kv_heads", "head_dim"), dtype)
    self.v = _param(rngs, (D, K, Dh), ("embed", "kv_heads", "head_dim"), dtype)
    self.o = _param(rngs, (H, Dh, D), ("heads", "head_dim", "embed"), dtype)
    if cfg.qkv_bias:
      self.q_bias = _param(rngs, (H, Dh), ("heads", "head_dim"), dtype, "zeros")
      self.k_bias = _param(rngs, (K, Dh), ("kv_heads", "head_dim"), dtype, "zeros")
      self.v_bias = _param(rngs, (K, Dh), ("kv_heads", "head_dim"), dtype, "zeros")
    else:
      self.q_bias = self.k_bias = self.v_bias = None
    if cfg.qk_norm:
      kw = dict(eps=cfg.norm_eps, plus_one=cfg.norm_scale_plus_one, dtype=dtype, rngs=rngs)
      self.q_norm = RMSNorm(Dh, "head_dim", **kw)
      self.k_norm = RMSNorm(Dh, "head_dim", **kw)
    else:
      self.q_norm = self.k_norm = None
    scalar = cfg.query_pre_attn_scalar if cfg.query_pre_attn_scalar is not None else Dh
    self.scale = float(scalar) ** -0.5
    self.logit_cap = cfg.attn_logit_softcap

  def _project(self, x, w, b, norm, name):
    einsum = functools.partial(jnp.einsum, "btd,dnh->bnth")
    y = jax.lax.platform_dependent(x, w[...], cpu=_cpu_heads_projection, default=einsum)
    y = checkpoint_name(y, name)  # what remat policies keep by name (gkd_jax/remat.py)
    if b is not None:
      y = y + b[...][None, :, None, :]
    if norm is not None:
      y = norm(y)
    return y

  def __call__(self, x_BxTxD, cos, sin, mask_BxTxS, kv_fn: Optional[KVFn], query_from: int = 0):
    """Attention output for the queries at positions >= `query_from` (keys: every position)."""
    x_q, cos_q, sin_q = x_BxTxD[:, query_from:], cos[:, query_from:], sin[:, query_from:]
    q_name, k_name, v_name, out_name = remat_lib.ATTENTION_OUTPUTS
    q = rope.apply(self._project(x_q, self.q, self.q_bias, self.q_norm, q_name), cos_q, sin_q)
    k = rope.apply(self._project(x_BxTxD, self.k, self.k_bias, self.k_norm, k_name), cos, sin)
    v = self._project(x_BxTxD, self.v, self.v_bias, None, v_name)
    extra = None
    if kv_fn is not None:
      k, v, extra = kv_fn(k, v)
    B, H, T, Dh = q.shape
    K = self.num_kv_heads
    q = q.reshape(B, K, H // K, T, Dh)
    logits = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = softcap(logits * self.scale, self.logit_cap)
    logits = jnp.where(mask_BxTxS[:, None, None, query_from:], logits, MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksd->bkgtd", probs, v).reshape(B, H, T, Dh)
    einsum = functools.partial(jnp.einsum, "bnth,nhd->btd")
    out = jax.lax.platform_dependent(out, self.o[...], cpu=_cpu_output_projection, default=einsum)
    return checkpoint_name(out, out_name), extra


# On CPU the attention projections are plain [B*T, D] x [D, N*H] matmuls (`matmul.dense`): XLA:CPU
# otherwise transposes the [D, N, H] weights for the einsum, inside the decode loop once per token.
# TPU and GPU keep the einsums (their memory plans moved either way with the reshaped form).
def _cpu_heads_projection(x_BxTxD, w_DxNxH):
  B, T, D = x_BxTxD.shape
  _, N, H = w_DxNxH.shape
  y_BxTxNxH = matmul.dense(x_BxTxD, w_DxNxH.reshape(D, N * H)).reshape(B, T, N, H)
  return jnp.swapaxes(y_BxTxNxH, 1, 2)


def _cpu_output_projection(out_BxNxTxH, w_NxHxD):
  B, N, T, H = out_BxNxTxH.shape
  out_BxTxNH = jnp.swapaxes(out_BxNxTxH, 1, 2).reshape(B, T, N * H)
  return matmul.dense(out_BxTxNH, w_NxHxD.reshape(N * H, -1))


class MLP(nnx.Module):
  """Gated MLP: down(act(gate(x)) * up(x)); silu -> SwiGLU, gelu_tanh -> GeGLU."""

  def __init__(self, cfg: ModelConfig, dtype, rngs: nnx.Rngs):
    D, F = cfg.embed_dim, cfg.mlp_dim
    self.gate = _param(rngs, (D, F), ("embed", "mlp"), dtype)
    self.up = _param(rngs, (D, F), ("embed", "mlp"), dtype)
    self.down = _param(rngs, (F, D), ("mlp", "embed"), dtype)
    self.activation = cfg.activation

  def __call__(self, x_BxTxD):
    gate_name, up_name, down_name = remat_lib.MLP_OUTPUTS  # what remat policies name
    g_BxTxF = checkpoint_name(matmul.dense(x_BxTxD, self.gate[...]), gate_name)
    if self.activation == "silu":
      g_BxTxF = jax.nn.silu(g_BxTxF)
    else:
      g_BxTxF = jax.nn.gelu(g_BxTxF, approximate=True)
    u_BxTxF = checkpoint_name(matmul.dense(x_BxTxD, self.up[...]), up_name)
    return checkpoint_name(matmul.dense(g_BxTxF * u_BxTxF, self.down[...]), down_name)


class Block(nnx.Module):
  """Pre-norm block, with Gemma's optional post-attention / post-MLP (sandwich) norms."""

  def __init__(self, cfg: ModelConfig, sliding: bool, dtype, rngs: nnx.Rngs):
    kw = dict(eps=cfg.norm_eps, plus_one=cfg.norm_scale_plus_one, dtype=dtype, rngs=rngs)
    D = cfg.embed_dim
    self.sliding = sliding
    self.attn_norm = RMSNorm(D, "embed", **kw)
    self.attn = Attention(cfg, sliding, dtype, rngs)
    self.post_attn_norm = RMSNorm(D, "embed", **kw) if cfg.post_attn_norm else None
    self.mlp_norm = RMSNorm(D, "embed", **kw)
    self.mlp = MLP(cfg, dtype, rngs)
    self.post_mlp_norm = RMSNorm(D, "embed", **kw) if cfg.post_mlp_norm else None

  def __call__(self, x, cos, sin, mask, kv_fn: Optional[KVFn] = None, query_from: int = 0):
    """Outputs at positions >= `query_from` [B, T - query_from, D] (keys and values: all of x)."""
    h, extra = self.attn(self.attn_norm(x), cos, sin, mask, kv_fn, query_from)
    if self.post_attn_norm is not None:
      h = self.post_attn_norm(h)
    x = x[:, query_from:] + h
    h = self.mlp(self.mlp_norm(x))
    if self.post_mlp_norm is not None:
      h = self.post_mlp_norm(h)
    return x + h, extra


class Decoder(nnx.Module):
  """Embedding -> blocks -> final norm -> (tied or untied) unembedding."""

  def __init__(self, cfg: ModelConfig, dtype, rngs: nnx.Rngs, scan_layers: bool = False):
    self.cfg = cfg
    self.dtype = dtype
    self.scan_layers = scan_layers
    V, D = cfg.vocab_size, cfg.embed_dim
    self.embed = _param(rngs, (V, D), ("vocab", "embed"), dtype)
    if scan_layers:
      self.layers = _stacked_blocks(cfg, dtype, rngs)
    else:
      self.layers = nnx.List([Block(cfg, s, dtype, rngs) for s in cfg.is_sliding])
    self.final_norm = RMSNorm(
        D, "embed", eps=cfg.norm_eps, plus_one=cfg.norm_scale_plus_one, dtype=dtype, rngs=rngs
    )
    self.lm_head = None if cfg.tie_embeddings else _param(rngs, (D, V), ("embed", "vocab"), dtype)

  def embed_tokens(self, tokens_BxT):
    x = jnp.take(self.embed[...], tokens_BxT, axis=0)
    if self.cfg.scale_embeddings:
      x = x * jnp.asarray(math.sqrt(self.cfg.embed_dim), dtype=x.dtype)
    return x

  def unembedding(self) -> jax.Array:
    """[D,V] matrix mapping final-norm hidden states to logits (before the final soft-cap)."""
    return self.embed[...].T if self.lm_head is None else self.lm_head[...]

  def logits(self, hidden_BxTxD) -> jax.Array:
    if self.lm_head is None:  # contract with the [V,D] embedding directly (no transpose)
      logits = jnp.einsum(
          "btd,vd->btv", hidden_BxTxD, self.embed[...], preferred_element_type=jnp.float32
      )
    else:
      logits = jnp.einsum(
          "btd,dv->btv", hidden_BxTxD, self.lm_head[...], preferred_element_type=jnp.float32
      )
    return softcap(logits, self.cfg.final_logit_softcap)

  def __call__(
      self,
      tokens_BxT,
      positions_BxT,
      masks: dict,
      kv_fns=None,
      remat: remat_lib.Setting = False,
      output_from: int = 0,
      kv_carry=None,
      activations: Optional[jax.sharding.Sharding] = None,
  ):
    """Final-norm hidden states [B,T,D] and the per-layer `kv_fn` results.

    masks: {False: full-attention mask [B,T,S], True: sliding mask [B,T,S']} (bool, True = visible).
    kv_fns: None or one `KVFn` per layer.
    remat: what each layer keeps for the backward pass (only without kv_fns): a policy of
      gkd_jax/remat.py by name, True (= "full": recompute the whole layer, activation memory of
      one layer instead of all of them) or False (= "none").
    output_from: return only positions >= output_from, [B, T - output_from, D]: the last layer
      computes its queries, MLP and final norm there only (earlier positions feed it keys and
      values), e.g. the completion positions of a prompt + completion batch.
    activations: where the residual stream [B,T,D] lives on the mesh (e.g. rows over the batch
      axes), constrained after the embedding and after every layer. Without it XLA may follow the
      FSDP-sharded weights and shard the hidden width instead, leaving every chip with all rows'
      activations (and their backward) however many chips share the batch.

    With `scan_layers` the arguments differ as `_scan` documents: `kv_fns` is one `ScanKVFn` and
    `kv_carry` its initial state, and the second result is the final `kv_carry`.
    """
    cfg = self.cfg
    x = _constrain(self.embed_tokens(tokens_BxT), activations)
    rot = {}
    for sliding in sorted(set(cfg.is_sliding)):
      rot[sliding] = rope.cos_sin(rope.inv_freq(cfg, sliding), positions_BxT, x.dtype)
    if self.scan_layers:
      x, kv_carry = self._scan(x, rot, masks, kv_fns, kv_carry, remat, activations)
      return self.final_norm(x[:, output_from:]), kv_carry
    if kv_carry is not None:
      raise ValueError("kv_carry is for scan_layers decoders; the loop takes one kv_fn per layer")
    extras = []
    remat = remat_lib.policy_name(remat)
    last = len(self.layers) - 1
    for i, layer in enumerate(self.layers):
      s = cfg.is_sliding[i]
      cos, sin = rot[s]
      query_from = output_from if i == last else 0
      if remat != "none" and kv_fns is None and not query_from:
        x, extra = _remat_block(remat)(layer, x, cos, sin, masks[s]), None
      else:
        x, extra = layer(x, cos, sin, masks[s], None if kv_fns is None else kv_fns[i], query_from)
      x = _constrain(x, activations)
      extras.append(extra)
    return self.final_norm(x), extras

  def _scan(self, x_BxTxD, rot, masks, kv_fn: Optional["ScanKVFn"], kv_carry, remat, activations):
    """The blocks as one `lax.scan` over the stacked layer params: XLA compiles one block body
    (compile time flat in depth) and fetches one layer's weights per iteration.

    Per-layer scanned data: the params slice, the layer index and whether the layer slides. When
    the config mixes sliding and full layers (Gemma 2/3, pruned models in any order) each layer
    selects its RoPE tables and mask with `jnp.where` (exact: a select, not arithmetic), so
    `masks[True]` and `masks[False]` must have one shape. kv_fn(k, v, layer, kv_carry) -> (keys,
    values, new kv_carry) replaces the looped form's per-layer kv_fns: the state the layers share
    (e.g. KV caches stacked on a leading layer axis) rides in the scan carry, updated in place.

    Every layer, the last included, runs over all positions (running the last one apart to skip
    the positions before `output_from` would slice, and so copy, the stacked weights); the caller
    drops them after the scan. `remat` (a gkd_jax/remat.py setting) wraps the body in
    `jax.checkpoint` with that policy (without kv_fn).
    """
    cfg = self.cfg
    graphdef = _block_graphdef(cfg, self.dtype)
    params_L = nnx.state(self.layers, nnx.Param).to_pure_dict()
    mixed = len(set(cfg.is_sliding)) > 1

    # Gemma 2 (and Llama/Qwen) use one set of RoPE frequencies for both kinds: no select then.
    same_rope = not mixed or np.array_equal(rope.inv_freq(cfg, True), rope.inv_freq(cfg, False))

    def pick(sliding, by_kind, differ=True):
      if not mixed or not differ:
        return by_kind[cfg.is_sliding[0]]
      return jax.tree.map(lambda a, b: jnp.where(sliding, a, b), by_kind[True], by_kind[False])

    def layer(x, params, sliding, i, carry):
      (cos, sin), mask = pick(sliding, rot, not same_rope), pick(sliding, masks)
      fn = None if kv_fn is None else functools.partial(kv_fn, layer=i, kv_carry=carry)
      return nnx.merge(graphdef, params)(x, cos, sin, mask, fn)

    remat = remat_lib.policy_name(remat)
    if remat != "none" and kv_fn is None:
      policy = remat_lib.checkpoint_policy(remat)  # inside scan, CSE cannot undo the remat:
      layer = jax.checkpoint(layer, prevent_cse=False, policy=policy)

    def body(carry, xs):
      x, kv = layer(carry[0], *xs, carry[1])
      return (_constrain(x, activations), kv), None

    xs = (params_L, jnp.asarray(cfg.is_sliding), jnp.arange(cfg.num_layers, dtype=jnp.int32))
    (x_BxTxD, kv_carry), _ = jax.lax.scan(body, (x_BxTxD, kv_carry), xs)
    return x_BxTxD, kv_carry


def _constrain(x, sharding):
  return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


# kv_fn(k_BxKxTxH, v_BxKxTxH, *, layer, kv_carry) -> (keys, values, new kv_carry): the scanned
# decoder's counterpart of KVFn (layer: the traced index of the layer being run).
ScanKVFn = Callable[..., tuple[jax.Array, jax.Array, object]]


def _stacked_blocks(cfg: ModelConfig, dtype, rngs: nnx.Rngs) -> Block:
  """One `Block` whose every param has a leading [L] axis, logical name `layers` (its `sliding`
  is meaningless: the scan passes each layer's kind as data)."""

  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make(rngs):
    return Block(cfg, False, dtype, rngs)

  return make(rngs)


@functools.lru_cache(maxsize=64)
def _block_graphdef(cfg: ModelConfig, dtype):
  """The graph definition of one (unstacked) block, merged with each layer's params slice."""
  block = nnx.eval_shape(lambda: Block(cfg, False, dtype, nnx.Rngs(params=0)))
  return nnx.split(block, nnx.Param)[0]


@functools.lru_cache(maxsize=None)
def _remat_block(policy_name: str):
  """block(x, cos, sin, mask) -> x under `nnx.remat` with the named policy (one per name, so
  jit's trace cache sees the same function each call)."""

  def run(block: Block, x, cos, sin, mask):
    return block(x, cos, sin, mask)[0]

  return nnx.remat(run, policy=remat_lib.checkpoint_policy(policy_name))
