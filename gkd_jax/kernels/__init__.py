"""Vocabulary-streaming divergences, fused with the unembedding.

  d_N = fused_linear_divergence(student_hidden_NxDs, student_unembed_DsxV,
                 teacher_hidden_NxDt, teacher_unembed_DtxV, kind="jsd", beta=0.5)
  d_N, stats = fused_linear_divergence(..., spec, tokens=y_N, return_stats=True)  # TokenStats
  d_N = vocab_divergence(student_logits_NxV, teacher_logits_NxV, kind="forward_kl")
  ce_N = cross_entropy(hidden_NxD, unembed_DxV, targets_N);  h_N = entropy(hidden_NxD, unembed_DxV)

The hyperparameters are a `gkd_jax.divergences.DivergenceSpec` (kind, beta, alpha, temperature,
soft-caps), passed whole as ``spec`` or as its fields by keyword. Every function returns float32
per-token values (the math of `gkd_jax.divergences`) and never holds an [N, V] array (beyond the
logits a `vocab_divergence` caller already has). Gradients flow to the student hidden states and
student unembedding (or student logits) only; the teacher gets zero cotangents. The `TokenStats` of
``return_stats`` (both entropies and the student's log-prob of ``tokens``, of the two distributions
the divergence compares, i.e. at its temperature and soft-caps) come out of the divergence's own
value pass and carry no gradient.

impl:
 "reference"  dense `divergences.token_divergence` on materialised logits (tests, small inputs);
 "chunked"    pure XLA streaming over vocabulary blocks, custom VJP (`chunked.py`);
 "pallas"     Pallas kernels: Mosaic on TPU, Triton on GPU; on CPU they run in interpret mode
       (`pallas_tpu.py`, `pallas_gpu.py`);
 "auto"       reference while the [N, V] logits are small (`DENSE_MAX_ELEMENTS`), else pallas on
              TPU/GPU and chunked on CPU.

Sharding: pass ``layout=Layout(mesh, vocab_axis, token_axes)`` (`layout.py`). Tokens sharded over
``token_axes`` run on their own device (any ``impl``); with ``vocab_axis`` the unembeddings'
vocabulary is sharded over that axis, every shard streams over its own slice (chunked passes,
whatever ``impl``) and only [N]-sized statistics cross devices (`vocab_parallel.py`).

Pallas on a CPU host runs in interpret mode (``interpret=None``); ``interpret=False`` lowers the real
TPU/CUDA kernels, e.g. for ``jax.export(..., platforms=["tpu"])``. Block sizes: ``token_block`` and
``vocab_block`` (TPU: the largest of 256 x 512/256/128 within a VMEM budget, e.g. 256 x 512 for
bf16 and 256 x 128 for float32 operands at Gemma 2 widths; the VMEM limit requested is derived from
them and stays within every TPU generation from v5e on, `pallas_tpu.vmem_limit`), ``hidden_block`` (the
Triton kernel's step over the hidden size). The hyperparameters must be Python numbers (they are
compiled into the kernels); `gkd_jax.divergences.token_divergence` also accepts traced ones.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gkd_jax import divergences
from gkd_jax.divergences import DivergenceSpec
from gkd_jax.kernels import chunked, common, vocab_parallel
from gkd_jax.kernels.layout import Layout
from gkd_jax.kernels.single import cross_entropy, entropy
from gkd_jax.kernels.fused_topk import fused_linear_topk_divergence

if TYPE_CHECKING:  # Pallas is imported only when impl="pallas" runs (`_local`)
  from jax.experimental.pallas import tpu as pltpu

IMPLS = ("auto", "reference", "chunked", "pallas")
# impl="auto" takes the dense path while one [N, V] float32 logits array is at most 64 MiB: on a
# 2-core CPU host the dense value+gradient (JSD, Ds=256, Dt=512) was 2.1x faster than the chunked
# streaming at N*V=2^21, 1.8x at 2^24 and 1.3x at 2^26, where its several [N, V] temporaries
# (GiBs) are no longer "small".
DENSE_MAX_ELEMENTS = 2**24


def resolve_impl(
    impl: str,
    backend: str | None = None,
    *,
    tokens: int | None = None,
    vocab: int | None = None,
) -> str:
  """The implementation "auto" means on `backend` (default: jax.default_backend()) for `tokens`
  x `vocab` logits per device: dense when small (DENSE_MAX_ELEMENTS), else Pallas on TPU/GPU and
  the chunked streaming elsewhere."""
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r} is not one of {IMPLS}")
  if impl != "auto":
    return impl
  if tokens is not None and vocab is not None and tokens * vocab <= DENSE_MAX_ELEMENTS:
    return "reference"
  backend = backend or jax.default_backend()
  return "pallas" if backend in ("tpu", "gpu", "cuda", "rocm") else "chunked"


class TokenStats(NamedTuple):
  """Per-token metrics from the divergence's value pass, [N] float32 each, without gradient."""

  student_entropy: jax.Array
  teacher_entropy: jax.Array
  student_logprob: jax.Array  # log p_S(tokens[i]) (of token id 0 when no tokens are given)


def _spec(spec, hyperparameters, tokens, student_vocab, teacher_vocab) -> DivergenceSpec:
  spec = divergences.as_spec(
      spec, hyperparameters, tokens=tokens, student_vocab=student_vocab, teacher_vocab=teacher_vocab
  )
  return common.require_numbers(spec)


def _check_fused_shapes(hs, Ws, ht, Wt, tokens):
  names = (
      ("student_hidden", hs, 2),
      ("student_unembed", Ws, 2),
      ("teacher_hidden", ht, 2),
      ("teacher_unembed", Wt, 2),
  )
  for name, x, nd in names:
    if x.ndim != nd:
      raise ValueError(f"{name}.shape={tuple(x.shape)} must have {nd} dimensions")
  if hs.shape[1] != Ws.shape[0]:
    raise ValueError(
        f"student_hidden.shape={tuple(hs.shape)} does not match "
        f"student_unembed.shape={tuple(Ws.shape)} (hidden size)"
    )
  if ht.shape[1] != Wt.shape[0]:
    raise ValueError(
        f"teacher_hidden.shape={tuple(ht.shape)} does not match "
        f"teacher_unembed.shape={tuple(Wt.shape)} (hidden size)"
    )
  if hs.shape[0] != ht.shape[0]:
    raise ValueError(
        f"student_hidden.shape={tuple(hs.shape)} and teacher_hidden.shape="
        f"{tuple(ht.shape)} have different numbers of tokens"
    )
  if tokens is not None and tuple(tokens.shape) != (hs.shape[0],):
    raise ValueError(f"tokens.shape={tuple(tokens.shape)} must be ({hs.shape[0]},)")


def _check_blocks(**blocks):
  for name, b in blocks.items():
    if b is not None and (not isinstance(b, int) or b <= 0):
      raise ValueError(f"{name}={b!r} must be a positive int")


def _tokens_or_dummy(tokens, n):
  if tokens is None:
    return jnp.zeros((n,), jnp.int32)
  return jnp.asarray(tokens).astype(jnp.int32)


def _dense(spec: DivergenceSpec, zs, zt, tokens):
  """impl="reference": the dense definitions on materialised logits (teacher without gradient)."""
  zt = jax.lax.stop_gradient(zt)
  d = divergences.token_divergence(
      zs, zt, spec, tokens=tokens if spec.kind == "sampled_reverse_kl" else None
  )

  def logp(z, cap):
    return divergences.log_softmax(divergences.softcap_and_scale(z, cap, spec.temperature))

  def ent(lp):
    return -jnp.sum(jnp.where(lp > -jnp.inf, jnp.exp(lp) * lp, 0.0), axis=-1)

  s, t = jax.lax.stop_gradient(logp(zs, spec.student_softcap)), logp(zt, spec.teacher_softcap)
  y = jnp.zeros(zs.shape[:-1], jnp.int32) if tokens is None else jnp.asarray(tokens, jnp.int32)
  s_y = jnp.take_along_axis(s, y[..., None], axis=-1)[..., 0]
  return d, ent(s), ent(t), s_y


def _local(spec, impl, blocks, interpret, hs, Ws, ht, Wt, tok):
  """(F, H_S, H_T, log p_S(tok)) on one device's tokens and whole vocabulary."""
  impl = resolve_impl(impl, tokens=hs.shape[0], vocab=Ws.shape[1])
  if impl == "reference":
    return _dense(spec, common.dot(hs, Ws), common.dot(ht, Wt), tok)
  vocab_block, token_block, hidden_block = blocks
  if impl == "chunked":
    return chunked.fused(
        spec, min(vocab_block or chunked.DEFAULT_VOCAB_BLOCK, Ws.shape[1]), hs, Ws, ht, Wt, tok
    )
  from gkd_jax.kernels import pallas  # pylint: disable=import-outside-toplevel  (imports Pallas)

  return pallas.fused(spec, hs, Ws, ht, Wt, tok, blocks=blocks, interpret=interpret)


def fused_linear_divergence(
    student_hidden: jax.Array,
    student_unembed: jax.Array,
    teacher_hidden: jax.Array,
    teacher_unembed: jax.Array,
    spec: DivergenceSpec | None = None,
    *,
    tokens: jax.Array | np.ndarray | None = None,
    impl: str = "auto",
    vocab_block: int | None = None,
    token_block: int | None = None,
    hidden_block: int | None = None,
    layout: Layout | None = None,
    interpret: bool | pltpu.InterpretParams | None = None,
    return_stats: bool = False,
    **hyperparameters: Any,
) -> jax.Array | tuple[jax.Array, TokenStats]:
  """Per-token divergence [N] float32 of softmax(hidden @ unembed) for student vs teacher.

  student_hidden [N, Ds], student_unembed [Ds, V], teacher_hidden [N, Dt], teacher_unembed [Dt, V].
  ``spec`` or its fields by keyword (``kind=...``, ``beta=...``): the divergence.
  ``vocab_block`` / ``token_block`` / ``hidden_block``: tile sizes (defaults per implementation).
  ``tokens`` [N] int: the sampled token ids, for kind="sampled_reverse_kl" only.
  ``layout``: how tokens and vocabulary are sharded over a mesh (`Layout`).
  ``return_stats``: return ``(divergence, TokenStats)`` (entropies, log p_S(tokens); no gradient).
  """
  hs, Ws, ht, Wt = student_hidden, student_unembed, teacher_hidden, teacher_unembed
  spec = _spec(spec, hyperparameters, tokens, Ws.shape[-1], Wt.shape[-1])
  _check_fused_shapes(hs, Ws, ht, Wt, tokens)
  resolve_impl(impl)  # a bad name fails here; "auto" is resolved per device's shapes (`_local`)
  _check_blocks(vocab_block=vocab_block, token_block=token_block, hidden_block=hidden_block)
  tok = _tokens_or_dummy(tokens, hs.shape[0])
  local = functools.partial(_local, spec, impl, (vocab_block, token_block, hidden_block), interpret)
  if layout is not None and layout.vocab_axis is not None:
    outs = vocab_parallel.fused(spec, layout, hs, Ws, ht, Wt, tok, vocab_block=vocab_block)
  elif layout is not None and layout.token_shards > 1:
    outs = vocab_parallel.token_parallel(local, layout, hs, Ws, ht, Wt, tok)
  else:
    outs = local(hs, Ws, ht, Wt, tok)
  d, *stats = outs
  if not return_stats:
    return d
  return d, TokenStats(*(jax.lax.stop_gradient(x) for x in stats))


def vocab_divergence(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    spec: DivergenceSpec | None = None,
    *,
    tokens: jax.Array | np.ndarray | None = None,
    impl: str = "auto",
    vocab_block: int | None = None,
    **hyperparameters: Any,
) -> jax.Array:
  """Per-token divergence [...] float32 for logits [..., V], streamed over vocabulary blocks.

  Gradients reach ``student_logits`` only. impl "pallas" uses the chunked streaming for logits
  (the Pallas kernels are fused with the unembedding, where the memory is).
  """
  zs, zt = student_logits, teacher_logits
  spec = _spec(spec, hyperparameters, tokens, zs.shape[-1], zt.shape[-1])
  if zs.shape != zt.shape:
    raise ValueError(
        f"student_logits.shape={tuple(zs.shape)} != " f"teacher_logits.shape={tuple(zt.shape)}"
    )
  if tokens is not None and tuple(tokens.shape) != tuple(zs.shape[:-1]):
    raise ValueError(f"tokens.shape={tuple(tokens.shape)} must be {tuple(zs.shape[:-1])}")
  lead, V = zs.shape[:-1], zs.shape[-1]
  impl = resolve_impl(impl, tokens=zs.size // max(V, 1), vocab=V)
  _check_blocks(vocab_block=vocab_block)
  if impl == "reference":
    return _dense(spec, zs, zt, tokens)[0]
  n = 1
  for d in lead:
    n *= d
  tok = _tokens_or_dummy(None if tokens is None else tokens.reshape(n), n)
  bv = min(vocab_block or chunked.DEFAULT_VOCAB_BLOCK, V)
  out = chunked.from_logits(spec, bv, zs.reshape(n, V), zt.reshape(n, V), tok)
  return out.reshape(lead)


__all__ = [
    "IMPLS",
    "DivergenceSpec",
    "Layout",
    "TokenStats",
    "cross_entropy",
    "entropy",
    "fused_linear_divergence",
    "fused_linear_topk_divergence",
    "resolve_impl",
    "vocab_divergence",
]
