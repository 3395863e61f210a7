"""Pallas kernels: interpret mode on CPU against the float64 reference, and lowering for TPU / CUDA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from divergence_reference import assert_close, ref_fused_value_and_grad
from gkd_jax import kernels
from gkd_jax.divergences import DivergenceSpec
from gkd_jax.kernels import pallas_gpu
from test_kernels_chunked import CAPS, check_fused, check_sampled_reverse_kl_unbiased, fused_inputs

# Ragged on purpose: N = 5 tokens in blocks of 4, V = 37 in blocks of 16.
BLOCKS = dict(token_block=4, vocab_block=16)


@pytest.mark.parametrize(
    "spec, tau, caps",
    [
        (dict(kind="jsd", beta=0.5), 0.5, CAPS[1]),
        (dict(kind="jsd", beta=0.0), 2.0, CAPS[0]),  # = forward KL
        (dict(kind="reverse_kl"), 1.0, CAPS[1]),
        (dict(kind="skew_forward_kl", alpha=0.1), 2.0, CAPS[1]),
        (dict(kind="skew_reverse_kl", alpha=0.9), 0.5, CAPS[0]),
        (dict(kind="tvd"), 1.0, CAPS[1]),
        (dict(kind="sampled_reverse_kl"), 0.5, CAPS[1]),
    ],
    ids=lambda x: str(x),
)
def test_pallas_tpu_interpret(spec, tau, caps):
  check_fused("pallas", spec, tau, caps, **BLOCKS)


def test_pallas_sampled_reverse_kl_gradient_is_unbiased():
  """Interpret mode: E_{y ~ p_S} of the kernels' gradients is the reverse-KL gradient."""
  check_sampled_reverse_kl_unbiased("pallas", 0.7, CAPS[1], token_block=8, vocab_block=128)


def test_pallas_tpu_interpret_bf16():
  check_fused(
      "pallas", dict(kind="jsd", beta=0.9), 1.0, CAPS[1], dtype=jnp.bfloat16, rtol=1e-2, **BLOCKS
  )


@pytest.mark.parametrize("kind", ["jsd", "sampled_reverse_kl"])
def test_pallas_gpu_forward_interpret(kind):
  """The Triton forward kernel (generic interpret mode): ragged N, V and hidden sizes."""
  hs, ws, ht, wt, ct, tok = fused_inputs(1)
  spec = DivergenceSpec(kind, beta=0.1, temperature=2.0, student_softcap=3.0)
  outs = pallas_gpu.forward(
      spec,
      ws.shape[1],
      *(jnp.asarray(x) for x in (hs, ws, ht, wt)),
      jnp.asarray(tok, jnp.int32),
      bn=4,
      bv=16,
      bd=4,
      interpret=True,
  )
  d_ref, _, _ = ref_fused_value_and_grad(
      hs, ws, ht, wt, ct, tokens=tok, kind=kind, beta=0.1, tau=2.0, scap=3.0
  )
  assert_close(np.asarray(outs[4])[:, 0], d_ref, 1e-5, "value")


GEMMA2 = dict(N=8192, V=262144, Ds=2304, Dt=3584)


def _export(platform, backward):
  S = jax.ShapeDtypeStruct
  g = GEMMA2
  args = (
      S((g["N"], g["Ds"]), jnp.bfloat16),
      S((g["Ds"], g["V"]), jnp.bfloat16),
      S((g["N"], g["Dt"]), jnp.bfloat16),
      S((g["Dt"], g["V"]), jnp.bfloat16),
  )

  def fwd(a, b, c, d):
    return kernels.fused_linear_divergence(
        a,
        b,
        c,
        d,
        kind="jsd",
        beta=0.5,
        student_softcap=30.0,
        teacher_softcap=30.0,
        impl="pallas",
        interpret=False,
    )

  f = jax.grad(lambda *a: fwd(*a).mean(), argnums=(0, 1)) if backward else fwd
  checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  exp = export.export(jax.jit(f), platforms=[platform], disabled_checks=checks)(*args)
  return exp.mlir_module()


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
def test_export_tpu_gemma2_shapes(backward):
  text = _export("tpu", backward)
  assert text.count("tpu_custom_call") == (3 if backward else 1)
  assert "gkd_divergence_fwd" in text
  assert "8192x262144" not in text  # no [N, V] array anywhere


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
def test_export_cuda_gemma2_shapes(backward):
  text = _export("cuda", backward)
  assert "xla.gpu.triton" in text and "gkd_divergence_fwd_gpu" in text
  assert "8192x262144" not in text
