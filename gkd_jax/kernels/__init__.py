"""Vocabulary-streaming divergences, fused with the unembedding.

  d_N = fused_linear_divergence(student_hidden_NxDs, student_unembed_DsxV,
                 teacher_hidden_NxDt, teacher_unembed_DtxV, kind="jsd", beta=0.5)
  d_N = vocab_divergence(student_logits_NxV, teacher_logits_NxV, kind="forward_kl")

Both return float32 per-token divergences (the math of `gkd_jax.divergences`) and never hold an [N, V]
array (beyond the logits a `vocab_divergence` caller already has). Gradients flow to the student hidden
states and student unembedding (or student logits) only; the teacher gets zero cotangents.

impl:
 "reference"  dense `divergences.token_divergence` on materialised logits (for tests);
 "chunked"    pure XLA streaming over vocabulary blocks, custom VJP (`chunked.py`);
 "pallas"     Pallas kernels: Mosaic on TPU, Triton on GPU; on CPU they run in interpret mode
       (`pallas_tpu.py`, `pallas_gpu.py`);
 "auto"       pallas on TPU/GPU, chunked on CPU.

Vocab parallelism: pass ``mesh`` and ``vocab_axis`` when the unembeddings' vocabulary axis is sharded
over that mesh axis; every shard streams over its own slice (chunked passes, whatever ``impl``) and
only [N]-sized statistics cross devices (`vocab_parallel.py`).

Pallas on a CPU host runs in interpret mode (``interpret=None``); ``interpret=False`` lowers the real
TPU/CUDA kernels, e.g. for ``jax.export(..., platforms=["tpu"])``. Block sizes: ``token_block`` and
``vocab_block`` (TPU: the largest of 256 x 512/256/128 within a VMEM budget, e.g. 256 x 512 for
bf16 and 256 x 128 for float32 operands at Gemma 2 widths; the VMEM limit requested is derived from
them and stays within every TPU generation from v5e on, `pallas_tpu.vmem_limit`), ``hidden_block`` (the
Triton kernel's step over the hidden size). The hyperparameters must be Python numbers (they are
compiled into the kernels); `gkd_jax.divergences.token_divergence` also accepts traced ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gkd_jax import divergences
from gkd_jax.kernels import chunked, common

IMPLS = ("auto", "reference", "chunked", "pallas")


def resolve_impl(impl, backend=None):
  """The implementation "auto" means on `backend` (default: jax.default_backend())."""
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r} is not one of {IMPLS}")
  if impl != "auto":
    return impl
  backend = backend or jax.default_backend()
  return "pallas" if backend in ("tpu", "gpu", "cuda", "rocm") else "chunked"


def _check_fused_shapes(hs, Ws, ht, Wt, tokens):
  names = (("student_hidden", hs, 2), ("student_unembed", Ws, 2), ("teacher_hidden", ht, 2),
      ("teacher_unembed", Wt, 2))
  for name, x, nd in names:
    if x.ndim != nd:
      raise ValueError(f"{name}.shape={tuple(x.shape)} must have {nd} dimensions")
  if hs.shape[1] != Ws.shape[0]:
    raise ValueError(f"student_hidden.shape={tuple(hs.shape)} does not match "
            f"student_unembed.shape={tuple(Ws.shape)} (hidden size)")
  if ht.shape[1] != Wt.shape[0]:
    raise ValueError(f"teacher_hidden.shape={tuple(ht.shape)} does not match "
            f"teacher_unembed.shape={tuple(Wt.shape)} (hidden size)")
  if hs.shape[0] != ht.shape[0]:
    raise ValueError(f"student_hidden.shape={tuple(hs.shape)} and teacher_hidden.shape="
            f"{tuple(ht.shape)} have different numbers of tokens")
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


def fused_linear_divergence(
  student_hidden,
  student_unembed,
  teacher_hidden,
  teacher_unembed,
  *,
  kind,
  beta=0.5,
  alpha=0.1,
  temperature=1.0,
  student_softcap=None,
  teacher_softcap=None,
  tokens=None,
  impl="auto",
  vocab_block=None,
  token_block=None,
  hidden_block=None,
  mesh=None,
  vocab_axis=None,
  token_axes=None,
  interpret=None,
):
  """Per-token divergence [N] float32 of softmax(hidden @ unembed) for student vs teacher.

  student_hidden [N, Ds], student_unembed [Ds, V], teacher_hidden [N, Dt], teacher_unembed [Dt, V].
  ``vocab_block`` / ``token_block`` / ``hidden_block``: tile sizes (defaults per implementation).
  ``tokens`` [N] int: the sampled token ids, for kind="sampled_reverse_kl" only.
  ``mesh``, ``vocab_axis``: the unembeddings' vocabulary axis is sharded over ``vocab_axis``;
  ``token_axes``: mesh axes the token axis N of the hidden states is sharded over (e.g. the data axes).
  """
  hs, Ws, ht, Wt = student_hidden, student_unembed, teacher_hidden, teacher_unembed
  spec = common.make_spec(kind, beta, alpha, temperature, student_softcap, teacher_softcap,
              tokens=tokens, student_vocab=Ws.shape[-1], teacher_vocab=Wt.shape[-1])
  _check_fused_shapes(hs, Ws, ht, Wt, tokens)
  impl = resolve_impl(impl)
  _check_blocks(vocab_block=vocab_block, token_block=token_block, hidden_block=hidden_block)
  if mesh is not None and vocab_axis is not None:
    from gkd_jax.kernels import vocab_parallel
    return vocab_parallel.fused_linear_divergence(
      spec, hs, Ws, ht, Wt, tokens, mesh=mesh, vocab_axis=vocab_axis, token_axes=token_axes,
      impl=impl,
      vocab_block=vocab_block, token_block=token_block, hidden_block=hidden_block,
      interpret=interpret)
  tok = _tokens_or_dummy(tokens, hs.shape[0])
  if impl == "reference":
    zs = common.dot(hs, Ws)
    zt = jax.lax.stop_gradient(common.dot(ht, Wt))
    return divergences.token_divergence(
      zs, zt, kind=kind, beta=spec.beta, alpha=spec.alpha, temperature=spec.temperature,
      student_softcap=spec.student_softcap, teacher_softcap=spec.teacher_softcap,
      tokens=tok if kind == "sampled_reverse_kl" else None)
  if impl == "chunked":
    bv = min(vocab_block or chunked.DEFAULT_VOCAB_BLOCK, Ws.shape[1])
    return chunked.fused(spec, bv, hs, Ws, ht, Wt, tok)
  from gkd_jax.kernels import pallas
  return pallas.fused(spec, hs, Ws, ht, Wt, tok, vocab_block=vocab_block,
                token_block=token_block, hidden_block=hidden_block,
                interpret=interpret)


def vocab_divergence(
  student_logits,
  teacher_logits,
  *,
  kind,
  beta=0.5,
  alpha=0.1,
  temperature=1.0,
  student_softcap=None,
  teacher_softcap=None,
  tokens=None,
  impl="auto",
  vocab_block=None,
):
  """Per-token divergence [...] float32 for logits [..., V], streamed over vocabulary blocks.

  Gradients reach ``student_logits`` only. impl "pallas" uses the chunked streaming for logits
  (the Pallas kernels are fused with the unembedding, where the memory is).
  """
  zs, zt = student_logits, teacher_logits
  spec = common.make_spec(kind, beta, alpha, temperature, student_softcap, teacher_softcap,
              tokens=tokens, student_vocab=zs.shape[-1], teacher_vocab=zt.shape[-1])
  if zs.shape != zt.shape:
    raise ValueError(f"student_logits.shape={tuple(zs.shape)} != "
            f"teacher_logits.shape={tuple(zt.shape)}")
  if tokens is not None and tuple(tokens.shape) != tuple(zs.shape[:-1]):
    raise ValueError(f"tokens.shape={tuple(tokens.shape)} must be {tuple(zs.shape[:-1])}")
  impl = resolve_impl(impl)
  _check_blocks(vocab_block=vocab_block)
  lead, V = zs.shape[:-1], zs.shape[-1]
  if impl == "reference":
    return divergences.token_divergence(
      zs, jax.lax.stop_gradient(zt), kind=kind, beta=spec.beta, alpha=spec.alpha,
      temperature=spec.temperature, student_softcap=spec.student_softcap,
      teacher_softcap=spec.teacher_softcap, tokens=tokens)
  n = 1
  for d in lead:
    n *= d
  tok = _tokens_or_dummy(None if tokens is None else tokens.reshape(n), n)
  bv = min(vocab_block or chunked.DEFAULT_VOCAB_BLOCK, V)
  out = chunked.from_logits(spec, bv, zs.reshape(n, V), zt.reshape(n, V), tok)
  return out.reshape(lead)


__all__ = ["IMPLS", "fused_linear_divergence", "resolve_impl", "vocab_divergence"]
