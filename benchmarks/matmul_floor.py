"""The benchmark's matmuls alone: how fast a GKD step could be on this CPU with XLA's own kernels.

A GKD step's weight matmuls are fixed by the models and the batch; an implementation controls
everything around them. These replicas run those matmuls at the step's shapes (float32, XLA's CPU
kernels, random weights of the models' sizes, unembeddings as [D,V]) with only the elementwise
products that connect them: no attention scores, norms, activations, softmax, divergence passes
or optimizer, and where a shape is in doubt the smaller one. Their time is a lower bound on the
step's time under XLA at these shapes, so TRL's time over it bounds the ratio any gkd_jax change
could reach here without faster matmul kernels.

- `update`: the teacher's forward (every layer over prompt + completion; the last layer and the
  unembedding only at the N positions that predict the completion) and the student's forward and
  backward at the same positions (gradients for every weight and the input hidden states).
- `sample`: the student's prefill over the prompt (its last layer and the unembedding at one
  position per row), then N + 1 one-token steps of every layer and the unembedding (the decode
  loop, including its unused last forward).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _weights(cfg, rng) -> list[dict]:
  """Per layer: q, k, v, o, gate, up, down as 2D [in, out] float32 matrices of `cfg`'s sizes."""
  D, F = cfg.embed_dim, cfg.mlp_dim
  Q, KV = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  shapes = dict(q=(D, Q), k=(D, KV), v=(D, KV), o=(Q, D), gate=(D, F), up=(D, F), down=(F, D))
  return [
      {n: jnp.asarray(rng.standard_normal(s) * 0.02, jnp.float32) for n, s in shapes.items()}
      for _ in range(cfg.num_layers)
  ]


def _layer(w, x_MxD, keep: int = 0):
  """One layer's matmuls; with `keep`, only the last `keep` rows go past the keys and values.
  Queries meet the keys and values of every row in one elementwise product, as in attention."""
  kv = (x_MxD @ w["k"]) * (x_MxD @ w["v"])
  if keep:
    x_MxD = x_MxD[-keep:]
  q = x_MxD @ w["q"]
  kv = jnp.mean(kv, axis=0) + kv[-x_MxD.shape[0] :]
  x_MxD = x_MxD + (q * jnp.tile(kv, (1, q.shape[1] // kv.shape[1]))) @ w["o"]
  return x_MxD + ((x_MxD @ w["gate"]) * (x_MxD @ w["up"])) @ w["down"]


def _forward(layers, unembed_DxV, x_MxD, keep: int):
  for i, w in enumerate(layers):
    x_MxD = _layer(w, x_MxD, keep if i == len(layers) - 1 else 0)
  return x_MxD @ unembed_DxV


def programs(student_cfg, teacher_cfg, batch: int, prompt_len: int, new_tokens: int, seed=0):
  """{"update": (fn, args), "sample": (fn, args)}: jitted matmul-only replicas and their inputs
  (the vocabularies must be at least the student's width: logits feed back as hidden states)."""
  rng = np.random.default_rng(seed)
  B, P, N = batch, prompt_len, new_tokens
  s_layers, t_layers = _weights(student_cfg, rng), _weights(teacher_cfg, rng)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  s_emb = 0.02 * normal(student_cfg.embed_dim, student_cfg.vocab_size)
  t_emb = 0.02 * normal(teacher_cfg.embed_dim, teacher_cfg.vocab_size)
  xs, xt = normal(B * (P + N), student_cfg.embed_dim), normal(B * (P + N), teacher_cfg.embed_dim)
  keep = B * N  # rows of the last layer and the unembedding (batch rows flattened together)

  def update(s_layers, s_emb, xs, t_layers, t_emb, xt):
    zt = _forward(t_layers, t_emb, xt, keep)
    loss = lambda p, x: jnp.sum(_forward(p[0], p[1], x, keep) * zt)
    return jax.grad(loss, argnums=(0, 1))((s_layers, s_emb), xs)

  def sample(s_layers, s_emb, xs):
    prompt = _forward(s_layers, s_emb, xs[: B * P], B)
    x0 = xs[:B] + prompt[:B, : xs.shape[1]]

    def step(i, x_BxD):
      z = _forward(s_layers, s_emb, x_BxD, 0)
      return x_BxD + 1e-3 * z[:, : x_BxD.shape[1]]

    return jax.lax.fori_loop(0, N + 1, step, x0)

  return dict(
      update=(jax.jit(update), (s_layers, s_emb, xs, t_layers, t_emb, xt)),
      sample=(jax.jit(sample), (s_layers, s_emb, xs)),
  )
