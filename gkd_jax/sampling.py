"""sample(): autoregressive generation with a KV cache, one prefill and a compiled decode loop.

Layout. Prompts may be padded anywhere (left, right, mixed); they are first left-aligned inside the
jitted function (valid tokens moved to the end of the row, order kept), so every row's cache index
and RoPE position differ by a per-row constant (its padding count). Generated token i of every row
then sits at cache index P + i.

KV cache. One [B, K, S, Dh] key and value buffer per layer (model dtype), heads-major so decode
attention is a plain batched matmul. Full-attention layers have S = P + max_new_tokens. Sliding
layers keep a ring buffer of S = min(sliding_window, P + max_new_tokens) slots: cache index i lives
in slot i mod S and the slot's index is recomputed from the step (no bookkeeping array), so memory
and per-token attention cost of sliding layers are bounded by the window. A key is visible when it
is a real token (index >= the row's padding count) and, on sliding layers, q_pos - k_pos < window.

Scanned models (`model.scan_layers`): the caches are two [L, B, K, S, Dh] buffers carried through
the layer scan and written in place, and every layer, sliding ones included, gets the full
S = P + max_new_tokens with the window applied by the mask (same visibility, so the same samples).
Exact and order-preserving across any sliding/full pattern, at a memory cost: a sliding layer holds
P + N slots instead of min(window, P + N), which matters only once P + N exceeds the window (e.g.
Gemma 2 sampling beyond 4096 tokens: its sliding half of the cache grows to full size).

Decode. One prefill gives the first logits; each `lax.while_loop` iteration then chooses a token
from the logits in hand, records it and feeds it through the model (one token, all layers: a Python
loop over the per-layer params, or the layer scan), and the loop stops as soon as every row has
emitted an EOS (or max_new_tokens is reached). Everything is one compiled program: no host
synchronisation per token; `sample` can be called under an outer `jax.jit` and a mesh. Repeated
calls with the same shapes and static arguments reuse the compiled program.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from gkd_jax.models.api import Model, Params
from gkd_jax.scoring import attention_masks, positions_from_mask


class SampleOutput(NamedTuple):
  tokens: jax.Array  # [B,N] int32 generated tokens; pad_id after the first EOS
  mask: jax.Array  # [B,N] int32, 1 up to and including the first EOS
  logprobs: jax.Array  # [B,N] float32 log-prob under the sampling distribution; 0 where masked


def sample(
    model: Model,
    params: Params,
    prompt_tokens,
    prompt_mask,
    rng,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: Union[None, int, Sequence[int]] = None,
    return_logits: bool = False,
    activations: Optional[jax.sharding.Sharding] = None,
):
  """Generate `max_new_tokens` tokens after each prompt.

  prompt_tokens, prompt_mask: [B,P] (mask 1 = real token; every row needs at least one).
  temperature: 0 means greedy (argmax); otherwise logits / temperature, then top-k (0 = off), then
    top-p (nucleus, 1.0 = off) over what is left, as in transformers. `temperature` and `top_p` may
    be traced values; `max_new_tokens`, `top_k` and `eos_id` are static.
  eos_id: one id or several (any of them ends a row); None uses `model.config.eos_id`; a row with no
    EOS runs to max_new_tokens.
  Returns SampleOutput(tokens, mask, logprobs): logprobs are the chosen token's log-probability
  under the distribution actually sampled from (logits / temperature restricted to the top-k/top-p
  set and renormalised; for temperature 0, log_softmax(logits)), 0 where mask is 0.
  return_logits=True (for tests and debugging) returns (SampleOutput, logits [B,N,V] float32), the
  model's next-token logits at each step (zeros for steps never run).
  activations: where the residual stream [B,T,D] lives on a mesh (rows over the batch axes; see
  `Decoder.__call__`): without it the prefill may hold every row's activations on every device.
  """
  if int(max_new_tokens) < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
  if int(top_k) < 0 or int(top_k) > model.config.vocab_size:
    raise ValueError(f"top_k={top_k} must be in [0, vocab_size={model.config.vocab_size}]")
  if eos_id is None:
    eos_id = model.config.eos_id
  eos_ids = () if eos_id is None else tuple(int(e) for e in np.atleast_1d(eos_id))
  static_t = isinstance(temperature, (int, float))
  if static_t and temperature < 0:
    raise ValueError(f"temperature={temperature} must be >= 0")
  if isinstance(top_p, (int, float)) and not 0 < top_p <= 1:
    raise ValueError(f"top_p={top_p} must be in (0, 1]")
  greedy = bool(temperature == 0) if static_t else None  # None: the traced temperature decides
  use_top_p = not (isinstance(top_p, (int, float)) and top_p >= 1.0)
  static = _Static(
      int(max_new_tokens), int(top_k), eos_ids, greedy, use_top_p, bool(return_logits), activations
  )
  return _sample(model, static, params, prompt_tokens, prompt_mask, rng, temperature, top_p)


def choose_tokens(
    logits_BxV, rng, temperature, top_p, *, top_k: int, greedy: Optional[bool], use_top_p: bool
) -> tuple[jax.Array, jax.Array]:
  """One token per row from float32 logits, and its log-probability under the distribution it was
  drawn from: softmax(logits) when greedy (temperature 0), else softmax of logits / temperature
  restricted to the top-k / top-p set. greedy: True (temperature is 0), False (it is > 0) or None
  (a traced temperature: both are computed and it picks)."""

  def pick(logits, tok):
    return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[:, None], axis=-1)[:, 0]

  def best():
    tok = argmax(logits_BxV)
    return tok, pick(logits_BxV, tok)

  if greedy:
    return best()
  t = jnp.asarray(temperature, jnp.float32)
  scaled = logits_BxV / jnp.where(t > 0, t, 1.0)
  if top_k > 0:
    vals, idx = jax.lax.top_k(scaled, top_k)  # sorted, descending
    if use_top_p:
      vals = _nucleus_sorted(vals, top_p)
    choice = categorical(rng, vals)
    tok = jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0]
    lp = pick(vals, choice)
  else:
    if use_top_p:
      desc = -jnp.sort(-scaled, axis=-1)
      kept = _nucleus_sorted(desc, top_p)
      threshold = jnp.min(jnp.where(jnp.isfinite(kept), kept, jnp.inf), axis=-1, keepdims=True)
      scaled = jnp.where(scaled >= threshold, scaled, -jnp.inf)
    tok = categorical(rng, scaled)
    lp = pick(scaled, tok)
  if greedy is False:
    return tok, lp
  best_tok, best_lp = best()
  sampled = t > 0
  return jnp.where(sampled, tok, best_tok), jnp.where(sampled, lp, best_lp)


def argmax(x_BxV) -> jax.Array:
  """`jnp.argmax(x, -1)` as int32, NaN included (the first maximum, or the first NaN), computed as
  two plain reductions: XLA:CPU runs argmax's (value, index) reduction several times slower."""
  hit_BxV = (x_BxV == jnp.max(x_BxV, axis=-1, keepdims=True)) | jnp.isnan(x_BxV)
  iota_V = jnp.arange(x_BxV.shape[-1], dtype=jnp.int32)
  return jnp.min(jnp.where(hit_BxV, iota_V, x_BxV.shape[-1]), axis=-1)


def categorical(rng, logits_BxV) -> jax.Array:
  """`jax.random.categorical(rng, logits, axis=-1)` token for token (the same Gumbel noise, then
  the faster `argmax`), as int32."""
  return argmax(jax.random.gumbel(rng, logits_BxV.shape, logits_BxV.dtype) + logits_BxV)


def _nucleus_sorted(desc_BxK, top_p):
  """Keep the smallest prefix of descending logits whose probability mass reaches top_p."""
  probs = jax.nn.softmax(desc_BxK, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs
  keep = before < jnp.asarray(top_p, jnp.float32)
  keep = keep.at[:, 0].set(True)
  return jnp.where(keep, desc_BxK, -jnp.inf)


def _left_align(tokens_BxP, mask_BxP):
  order = jnp.argsort(mask_BxP.astype(jnp.int32), axis=-1, stable=True)
  return (
      jnp.take_along_axis(tokens_BxP, order, axis=-1),
      jnp.take_along_axis(mask_BxP.astype(jnp.int32), order, axis=-1),
  )


def cache_sizes(model: Model, prompt_len: int, max_new_tokens: int) -> tuple[int, ...]:
  """Per-layer KV cache length: P+N for full layers, min(window, P+N) for sliding ones (P+N for
  every layer of a scanned model: its caches are one stacked array)."""
  total = prompt_len + max_new_tokens
  cfg = model.config
  ring = not model.scan_layers
  return tuple(min(cfg.sliding_window, total) if s and ring else total for s in cfg.is_sliding)


class _Static(NamedTuple):
  """`_sample`'s compile-time arguments (one compiled program per distinct value)."""

  max_new_tokens: int
  top_k: int
  eos_ids: tuple[int, ...]
  greedy: Optional[bool]
  use_top_p: bool
  return_logits: bool
  activations: Optional[jax.sharding.Sharding] = None


@functools.partial(jax.jit, static_argnames=("model", "static"))
def _sample(
    model: Model, static: _Static, params, prompt_tokens, prompt_mask, rng, temperature, top_p
):
  max_new_tokens, top_k, eos_ids, greedy, use_top_p, return_logits, activations = static
  cfg = model.config
  B, P = prompt_tokens.shape
  N = max_new_tokens
  window = cfg.sliding_window
  sizes = cache_sizes(model, P, N)
  decoder = model.bind(params)
  tokens, mask = _left_align(prompt_tokens.astype(jnp.int32), prompt_mask)
  pad_B = P - jnp.sum(mask, axis=-1)

  # Prefill: attend within the prompt, write its keys/values into fresh caches.
  def prefill_fn(size):
    def to_cache(x):  # cache index i -> slot i mod size, for the last min(P, size) indices
      if P <= size:
        return jnp.pad(x, ((0, 0), (0, 0), (0, size - P), (0, 0)))
      return jnp.roll(x[:, :, P - size :], (P - size) % size, axis=2)

    def kv_fn(k, v):
      return k, v, (to_cache(k), to_cache(v))

    return kv_fn

  if model.scan_layers:
    # One [L,B,K,S,Dh] buffer each for keys and values; layer i writes its slice.
    shape = (cfg.num_layers, B, cfg.num_kv_heads, sizes[0], cfg.head_dim)
    kv_fn = prefill_fn(sizes[0])

    def prefill_scan_fn(k, v, *, layer, kv_carry):
      _, _, (kc, vc) = kv_fn(k, v)
      put = lambda c, x: jax.lax.dynamic_update_index_in_dim(c, x.astype(c.dtype), layer, 0)
      return k, v, (put(kv_carry[0], kc), put(kv_carry[1], vc))

    hidden, caches = decoder(
        tokens,
        positions_from_mask(mask),
        attention_masks(model, mask),
        prefill_scan_fn,
        kv_carry=(jnp.zeros(shape, model.dtype), jnp.zeros(shape, model.dtype)),
        activations=activations,
    )
  else:
    hidden, caches = decoder(
        tokens,
        positions_from_mask(mask),
        attention_masks(model, mask),
        [prefill_fn(s) for s in sizes],
        activations=activations,
    )
  logits0 = decoder.logits(hidden[:, -1:])[:, 0]

  choose = functools.partial(
      choose_tokens,
      temperature=temperature,
      top_p=top_p,
      top_k=top_k,
      greedy=greedy,
      use_top_p=use_top_p,
  )
  eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)

  out_tokens = jnp.full((B, N), cfg.pad_id, jnp.int32)
  out_mask = jnp.zeros((B, N), jnp.int32)
  out_lp = jnp.zeros((B, N), jnp.float32)
  # Optional [B,N,V] record of every step's logits (a size-0 placeholder when not asked for).
  out_logits = jnp.zeros((B, N, cfg.vocab_size) if return_logits else (0,), jnp.float32)

  def step(tok_B, t, caches):
    """Feed the token at cache index t; return next-token logits and the updated caches."""
    masks = {}
    for sliding in set(cfg.is_sliding):
      S = sizes[cfg.is_sliding.index(sliding)]
      slot_idx = t - jnp.mod(t - jnp.arange(S), S)  # cache index held by each slot
      vis = slot_idx[None, :] >= pad_B[:, None]
      if sliding:
        vis = vis & (t - slot_idx[None, :] < window)
      masks[sliding] = vis[:, None, :]

    def update_fn(cache, size):
      def kv_fn(k, v):
        at = (0, 0, jnp.mod(t, size), 0)
        kc = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), at)
        vc = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), at)
        return kc, vc, (kc, vc)

      return kv_fn

    def update_scan_fn(k, v, *, layer, kv_carry):
      at = (layer, 0, 0, jnp.mod(t, sizes[0]), 0)
      put = lambda c, x: jax.lax.dynamic_update_slice(c, x[None].astype(c.dtype), at)
      kc_L, vc_L = put(kv_carry[0], k), put(kv_carry[1], v)
      get = lambda c: jax.lax.dynamic_index_in_dim(c, layer, 0, keepdims=False)
      return get(kc_L), get(vc_L), (kc_L, vc_L)

    positions = (t - pad_B)[:, None]
    if model.scan_layers:
      hidden, new_caches = decoder(
          tok_B[:, None], positions, masks, update_scan_fn, kv_carry=caches, activations=activations
      )
    else:
      hidden, new_caches = decoder(
          tok_B[:, None],
          positions,
          masks,
          [update_fn(c, s) for c, s in zip(caches, sizes)],
          activations=activations,
      )
    return decoder.logits(hidden)[:, 0], new_caches

  def cond(carry):
    i, _, done = carry[:3]
    return (i < N) & ~jnp.all(done)

  def body(carry):
    # Choose token i from the logits in hand, record it, then feed it (cache index P + i). The
    # last iteration's forward is unused: one extra step out of N keeps a single copy of the
    # sampling code in the compiled program.
    i, logits, done, caches, out_tokens, out_mask, out_lp, out_logits = carry
    tok, lp = choose(logits, jax.random.fold_in(rng, i))
    live = ~done
    lp = jnp.where(live, lp, 0.0)
    tok = jnp.where(live, tok, cfg.pad_id)
    col = (0, i)
    out_tokens = jax.lax.dynamic_update_slice(out_tokens, tok[:, None], col)
    out_mask = jax.lax.dynamic_update_slice(out_mask, live.astype(jnp.int32)[:, None], col)
    out_lp = jax.lax.dynamic_update_slice(out_lp, lp[:, None], col)
    if return_logits:
      out_logits = jax.lax.dynamic_update_slice(out_logits, logits[:, None], (0, i, 0))
    done = done | (live & jnp.isin(tok, eos))
    logits, caches = step(tok, P + i, caches)
    return i + 1, logits, done, caches, out_tokens, out_mask, out_lp, out_logits

  carry = (
      jnp.int32(0),
      logits0,
      jnp.zeros((B,), bool),
      caches,
      out_tokens,
      out_mask,
      out_lp,
      out_logits,
  )
  carry = jax.lax.while_loop(cond, body, carry)
  out = SampleOutput(carry[4], carry[5], carry[6])
  return (out, carry[7]) if return_logits else out
