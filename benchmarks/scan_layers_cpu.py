"""`scan_layers` on CPU: the scanned decoder's step time and compile time against the loop.

Shapes are those of benchmarks/gkd_step_vs_trl.py (Gemma 2 architecture, V=4096, float32, sliding
window 4096 / full alternating): student 256 wide x 4 layers, teacher 512 x 6; batch 8 of 32-token
prompts + 64 completion tokens. Timed pieces of a GKD step, each as its own jitted program, both
forms in this one process, interleaved (looped, scanned, looped, ...) so they share the machine's
load; the median over repeats is reported:
  * student forward + backward: `jax.grad` of a scalar of `score(..., output_from=32)`;
  * teacher forward: `score(..., output_from=32)`;
  * sampling: `sample` of 64 new tokens (no EOS) with the student.
Compile time (lower + compile, fresh jit) of the student forward + backward at a deep config
(the student's widths at 48 layers) shows what the scan saves as depth grows.

  .venv/bin/python benchmarks/scan_layers_cpu.py                 # ~2 minutes on 2 cores
  .venv/bin/python benchmarks/scan_layers_cpu.py --repeats 5 --deep-layers 24
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import gkd_jax
from gkd_jax import models
from gkd_jax.models import FULL, SLIDING, ModelConfig


def gemma2(width: int, layers: int, heads: int, kv_heads: int, mlp: int) -> ModelConfig:
  return ModelConfig(
      model_type="gemma2",
      vocab_size=4096,
      num_layers=layers,
      embed_dim=width,
      mlp_dim=mlp,
      num_heads=heads,
      num_kv_heads=kv_heads,
      head_dim=64,
      activation="gelu_tanh",
      norm_scale_plus_one=True,
      post_attn_norm=True,
      post_mlp_norm=True,
      scale_embeddings=True,
      query_pre_attn_scalar=64.0,
      attn_logit_softcap=50.0,
      final_logit_softcap=30.0,
      sliding_window=4096,
      layer_types=tuple(SLIDING if i % 2 == 0 else FULL for i in range(layers)),
  )


STUDENT = dict(width=256, layers=4, heads=4, kv_heads=2, mlp=1024)
TEACHER = dict(width=512, layers=6, heads=8, kv_heads=4, mlp=2048)
B, P, N = 8, 32, 64


def pair(cfg: ModelConfig, seed: int):
  """{False: (looped model, params), True: (scanned model, stacked params)}, same weights."""
  looped = models.build(cfg)
  params = models.init(looped, jax.random.key(seed))
  return {
      False: (looped, params),
      True: (
          models.build(cfg, scan_layers=True),
          jax.block_until_ready(models.stack_layers(params)),
      ),
  }


def loss(model, params, tokens):
  logits = gkd_jax.score(model, params, tokens, output_from=P)
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1))


grad = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)
forward = jax.jit(lambda m, p, t: gkd_jax.score(m, p, t, output_from=P), static_argnums=0)


def programs(student, teacher, tokens, prompts):
  mask = jnp.ones(prompts.shape, jnp.int32)
  return {
      "student forward+backward": lambda s: grad(*student[s], tokens),
      "teacher forward": lambda s: forward(*teacher[s], tokens),
      "sample 64 tokens": lambda s: gkd_jax.sample(
          *student[s], prompts, mask, jax.random.key(0), max_new_tokens=N, eos_id=None
      ),
  }


def time_interleaved(fns: dict, repeats: int) -> dict:
  times = {(name, s): [] for name in fns for s in (False, True)}
  for fn in fns.values():
    for s in (False, True):
      jax.block_until_ready(fn(s))  # compile + warm up
  for r in range(repeats):
    for name, fn in fns.items():
      for s in ((False, True) if r % 2 == 0 else (True, False)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(s))
        times[(name, s)].append(time.perf_counter() - t0)
  return {k: statistics.median(v) for k, v in times.items()}


def compile_seconds(cfg: ModelConfig, scan: bool) -> float:
  model = models.build(cfg, scan_layers=scan)
  params = models.param_shapes(model)
  tokens = jax.ShapeDtypeStruct((B, P + N), jnp.int32)
  fn = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)
  t0 = time.perf_counter()
  fn.lower(model, params, tokens).compile()
  return time.perf_counter() - t0


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--repeats", type=int, default=9)
  ap.add_argument("--deep-layers", type=int, default=48)
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 4096, (B, P + N)), jnp.int32)
  student = pair(gemma2(**STUDENT), 0)
  teacher = pair(gemma2(**TEACHER), 1)
  fns = programs(student, teacher, tokens, tokens[:, :P])
  medians = time_interleaved(fns, args.repeats)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, median of {args.repeats}")
  print("| program | looped (ms) | scanned (ms) | scanned / looped |")
  print("|---|---:|---:|---:|")
  for name in fns:
    a, b = medians[(name, False)], medians[(name, True)]
    print(f"| {name} | {1e3 * a:.1f} | {1e3 * b:.1f} | {b / a:.2f} |")
  deep = gemma2(**dict(STUDENT, layers=args.deep_layers))
  rows = []
  for layers_cfg in (gemma2(**STUDENT), deep):
    rows.append(
        (
            layers_cfg.num_layers,
            compile_seconds(layers_cfg, False),
            compile_seconds(layers_cfg, True),
        )
    )
  print("\n| student fwd+bwd compile | looped (s) | scanned (s) | scanned / looped |")
  print("|---|---:|---:|---:|")
  for layers, a, b in rows:
    print(f"| {layers} layers | {a:.1f} | {b:.1f} | {b / a:.2f} |")


if __name__ == "__main__":
  main()
