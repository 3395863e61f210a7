"""The model's weight matmuls, with a backward pass written out for XLA:CPU.

Autodiff of `x @ w` transposes the dot_general into dw = dot_general(dy, x) followed by a
transpose. XLA:CPU then picks a layout that transposes the cotangent dy, and fuses that transpose
into the elementwise fusion producing dy (e.g. the GeGLU backward), which writes [N,F] with a
stride of N: at the benchmark's student sizes (768 tokens, 256 -> 1024) those four fusions took
longer than the MLP's matmuls. Written as dw = einsum("nd,nf->df") over the flattened tokens,
every dot reads row-major operands. On CPU the values equal autodiff's bit for bit (same dots,
same summation order; tests/test_matmul.py); TPU and GPU lower autodiff's own backward
(`lax.platform_dependent`, resolved when the program is lowered for its platform).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def dense(x_NxD: jax.Array, w_DxF: jax.Array) -> jax.Array:
  """x @ w for x [..., D] and w [D, F]."""
  return x_NxD @ w_DxF


def _fwd(x_NxD, w_DxF):
  # A plain dot_general (not `dense`, whose custom_vjp call would hide it) so that remat policies
  # that save matmul outputs (gkd_jax/remat.py: save_dots, offload) see it and can keep it.
  return x_NxD @ w_DxF, (x_NxD, w_DxF)


def _cpu_bwd(x_NxD, w_DxF, dy_NxF):
  dx_NxD = dy_NxF @ w_DxF.T
  dw_DxF = jnp.einsum(
      "nd,nf->df",
      x_NxD.reshape(-1, x_NxD.shape[-1]),
      dy_NxF.reshape(-1, dy_NxF.shape[-1]),
  )
  return dx_NxD, dw_DxF


def _autodiff_bwd(x_NxD, w_DxF, dy_NxF):
  return jax.vjp(jnp.matmul, x_NxD, w_DxF)[1](dy_NxF)


def _bwd(residuals, dy_NxF):
  x_NxD, w_DxF = residuals
  return jax.lax.platform_dependent(x_NxD, w_DxF, dy_NxF, cpu=_cpu_bwd, default=_autodiff_bwd)


dense.defvjp(_fwd, _bwd)
