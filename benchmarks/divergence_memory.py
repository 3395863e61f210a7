"""Temp memory of value_and_grad of the divergence: dense reference vs streaming (chunked, Pallas).

    .venv/bin/python benchmarks/divergence_memory.py            # writes benchmarks/results/divergence_memory.{md,png}
    .venv/bin/python benchmarks/divergence_memory.py --quick    # smaller N x V table

XLA's own numbers: `jax.jit(f).lower(*ShapeDtypeStruct).compile().memory_analysis()` on the CPU
backend (nothing is allocated), for value_and_grad w.r.t. the student hidden states and unembedding of
the mean JSD(0.5) with soft-capping, bf16 inputs (and float32, and bf16 with XLA:CPU's bf16
normalisation pass off, see NO_BF16_NORMALIZATION). Pallas cannot be compiled for TPU/GPU without the
device; its HBM temporaries are counted from the kernels' buffers instead (per-token [N, 1] float32
vectors; the hidden/unembedding gradients are outputs), and VMEM per grid step from the block sizes.
Wall time: median of repeats of chunked vs reference on CPU at a size that fits, in this process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from gkd_jax import kernels
from gkd_jax.kernels import pallas as pallas_impl
from gkd_jax.kernels import pallas_tpu

HERE = os.path.dirname(os.path.abspath(__file__))
GEMMA2 = dict(N=8192, V=262144, Ds=2304, Dt=3584)
GiB = 1024**3


def loss_fn(impl):
  def loss(hs, ws, ht, wt):
    d = kernels.fused_linear_divergence(
        hs, ws, ht, wt, kind="jsd", beta=0.5, student_softcap=30.0, teacher_softcap=30.0, impl=impl
    )
    return jnp.mean(d)

  return loss


def shapes(N, V, Ds, Dt, dtype=jnp.bfloat16):
  S = jax.ShapeDtypeStruct
  return S((N, Ds), dtype), S((Ds, V), dtype), S((N, Dt), dtype), S((Dt, V), dtype)


# XLA:CPU has no native bf16 for some ops: its bf16 float-normalisation pass upcasts them and loop-
# invariant code motion then hoists a float32 copy of both whole unembeddings out of the streaming
# loop (about 5.8 GiB at Gemma-2 size). TPU and GPU run bf16 natively; to see what they would, the
# table also compiles with that CPU pass disabled.
NO_BF16_NORMALIZATION = {"xla_disable_hlo_passes": "float-normalization-bf16"}


def temp_bytes(impl, N, V, Ds, Dt, dtype=jnp.bfloat16, options=None):
  f = jax.jit(jax.value_and_grad(loss_fn(impl), argnums=(0, 1)))
  compiled = f.lower(*shapes(N, V, Ds, Dt, dtype)).compile(compiler_options=options or {})
  return compiled.memory_analysis().temp_size_in_bytes


def pallas_bytes(N, V, Ds, Dt):
  """(HBM temporaries, VMEM per grid step) of the TPU kernels, counted from their buffers."""
  bn, bv = pallas_impl.block_sizes(N, V)
  hbm = 6 * N * 4 + 6 * N * 4  # forward outputs + padded copies fed to the backward kernels
  return hbm, pallas_tpu.vmem_bytes(bn, bv, Ds, Dt, 2, 2), (bn, bv)


def wall_ratio(N=512, V=32768, Ds=256, Dt=384, repeats=5):
  r = np.random.default_rng(0)
  args = [
      jnp.asarray(r.normal(size=s.shape), jnp.float32) * 0.05
      for s in shapes(N, V, Ds, Dt, jnp.float32)
  ]
  times = {}
  for impl in ("reference", "chunked"):
    f = jax.jit(jax.value_and_grad(loss_fn(impl), argnums=(0, 1)))
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(repeats):
      t = time.perf_counter()
      jax.block_until_ready(f(*args))
      ts.append(time.perf_counter() - t)
    times[impl] = statistics.median(ts)
  return dict(N=N, V=V, Ds=Ds, Dt=Dt, **times, ratio=times["chunked"] / times["reference"])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args()
  g = GEMMA2
  lines = [
      "# Divergence memory: value_and_grad of mean JSD(0.5), soft-cap 30, bf16 inputs",
      "",
      f"jax {jax.__version__}, backend {jax.default_backend()}; XLA temp bytes from "
      "`compile().memory_analysis()`; command: `.venv/bin/python benchmarks/divergence_memory.py`",
      "",
  ]
  rows = []
  for label, dtype, opts in (
      ("bf16, XLA:CPU defaults", jnp.bfloat16, None),
      ("bf16, CPU bf16 normalisation off", jnp.bfloat16, NO_BF16_NORMALIZATION),
      ("float32", jnp.float32, None),
  ):
    ref = temp_bytes("reference", **g, dtype=dtype, options=opts)
    chk = temp_bytes("chunked", **g, dtype=dtype, options=opts)
    rows.append(f"| {label} | {ref / GiB:.2f} GiB | {chk / GiB:.3f} GiB | 1/{ref / chk:.0f} |")
  hbm, vmem, (bn, bv) = pallas_bytes(**g)
  lines += (
      [
          f"## Gemma-2 shape N={g['N']} V={g['V']} Ds={g['Ds']} Dt={g['Dt']}",
          "",
          "| inputs, compiler | reference (dense) | chunked (vocab_block=512) | chunked / reference |",
          "| --- | --- | --- | --- |",
      ]
      + rows
      + [
          "",
          "XLA:CPU defaults with bf16: the CPU backend's bf16 normalisation upcasts the unembeddings "
          "and hoists a float32 copy of both out of the streaming loop (5.8 GiB); TPU/GPU multiply bf16 "
          "natively, which the second row imitates.",
          "",
          f"Pallas TPU (not compilable here; counted from the kernels' buffers): HBM temporaries "
          f"{hbm / 2**20:.2f} MiB (per-token [N, 1] float32 vectors), 1/{ref / hbm:.0f} of the dense "
          f"float32 reference; blocks bn={bn}, bv={bv} use about {vmem / 2**20:.1f} MiB of VMEM per "
          "grid step (double-buffered bf16 input blocks, float32 tiles, d-hidden accumulator).",
          "",
      ]
  )
  print("\n".join(lines), flush=True)

  Ns = (1024, 4096, 8192) if not args.quick else (1024, 4096)
  Vs = (32768, 131072, 262144) if not args.quick else (32768, 131072)
  table = {}
  lines += [
      "## Temp memory against N and V (Ds=2304, Dt=3584, bf16, CPU bf16 normalisation off)",
      "",
      "| N | V | reference GiB | chunked GiB | ratio |",
      "| --- | --- | --- | --- | --- |",
  ]
  for N in Ns:
    for V in Vs:
      r = temp_bytes("reference", N, V, g["Ds"], g["Dt"], options=NO_BF16_NORMALIZATION)
      c = temp_bytes("chunked", N, V, g["Ds"], g["Dt"], options=NO_BF16_NORMALIZATION)
      table[(N, V)] = (r, c)
      lines.append(f"| {N} | {V} | {r / GiB:.3f} | {c / GiB:.4f} | {r / c:.0f} |")
      print(lines[-1], flush=True)
  w = wall_ratio()
  lines += [
      "",
      "## CPU wall time, value_and_grad, float32 (median of 5)",
      "",
      f"N={w['N']} V={w['V']} Ds={w['Ds']} Dt={w['Dt']}: reference {w['reference'] * 1e3:.0f} ms, "
      f"chunked {w['chunked'] * 1e3:.0f} ms, chunked / reference = {w['ratio']:.2f}",
      "",
  ]
  print(lines[-2], flush=True)
  os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
  with open(os.path.join(HERE, "results", "divergence_memory.md"), "w") as f:
    f.write("\n".join(lines))

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, fixed_name, fixed, var_name, var in (
      (axes[0], "V", Vs[-1], "N", Ns),
      (axes[1], "N", Ns[-1], "V", Vs),
  ):
    key = (lambda x: (x, fixed)) if var_name == "N" else (lambda x: (fixed, x))  # noqa: E731
    ax.plot(var, [table[key(x)][0] / GiB for x in var], "o-", label="reference (dense)")
    ax.plot(var, [table[key(x)][1] / GiB for x in var], "s-", label="chunked (streaming)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(var_name)
    ax.set_ylabel("XLA temp memory (GiB)")
    ax.set_title(f"{fixed_name}={fixed}")
    ax.legend()
  fig.suptitle("XLA temp memory of value_and_grad(JSD), Ds=2304, Dt=3584, bf16")
  fig.tight_layout()
  fig.savefig(os.path.join(HERE, "results", "divergence_memory.png"), dpi=100)


if __name__ == "__main__":
  main()
