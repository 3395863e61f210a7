"""The Pallas TPU kernels compile with the real XLA:TPU + Mosaic compilers (libtpu, no TPU needed).

`jax.jit(f).lower(...).compile()` on devices of `jax.experimental.topologies.get_topology_desc`: a
kernel that lowers but does not compile (e.g. it overflows VMEM) fails here. What is covered (every
compile takes a few seconds on 2 CPU cores, so not the full product):
  * every divergence kind, forward + backward, at Gemma 2 shapes (bf16, soft-caps) on v5p;
  * jsd and skew_reverse_kl at Gemma 2 shapes on v5e and v6e;
  * the ragged vocabularies of Llama 3 (128256) and Qwen 3 (151936), jsd and sampled_reverse_kl, on
    v5e, v5p and v6e;
  * a float32 student with a bf16 teacher at Gemma 2 shapes (the dtypes of configs/gemma2_9b_to_2b.py)
    on v5p, the chip with the least VMEM of the three;
  * the VMEM limit the kernels request is within every chip's VMEM (jax's own chip table).
"""

import re

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from divergence_reference import KINDS
from gkd_jax import kernels
from gkd_jax.kernels import pallas, pallas_tpu
from tpu_helpers import tpu_devices

GEMMA2 = dict(N=8192, V=256000, Ds=2304, Dt=3584)  # Gemma 2 2B student, 9B teacher
LLAMA3 = dict(N=2048, V=128256, Ds=2048, Dt=4096)  # Llama 3.2 1B student, 3.1 8B teacher
QWEN3 = dict(N=2048, V=151936, Ds=2048, Dt=4096)  # Qwen 3 1.7B student, 8B teacher
TOPOLOGIES = {"v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}


def _compile(chip, kind, shapes, student_dtype=jnp.bfloat16, teacher_dtype=jnp.bfloat16):
  device = tpu_devices(TOPOLOGIES[chip])[0]
  rep = NamedSharding(Mesh([device], ("x",)), P())
  n, v, ds, dt = shapes["N"], shapes["V"], shapes["Ds"], shapes["Dt"]
  S = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=rep)  # noqa: E731
  args = (
      S((n, ds), student_dtype),
      S((ds, v), student_dtype),
      S((n, dt), teacher_dtype),
      S((dt, v), teacher_dtype),
      S((n,), jnp.int32),
  )

  def loss(hs, ws, ht, wt, tok):
    d = kernels.fused_linear_divergence(
        hs,
        ws,
        ht,
        wt,
        kind=kind,
        beta=0.3,
        alpha=0.2,
        temperature=0.7,
        student_softcap=30.0,
        teacher_softcap=30.0,
        tokens=tok if kind == "sampled_reverse_kl" else None,
        impl="pallas",
        interpret=False,
    )
    return d.mean()

  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args).compile()
  text = compiled.as_text()
  # The three Mosaic kernels (forward, d hidden, d unembed) are in the TPU program.
  assert len(re.findall(r'custom_call_target="tpu_custom_call"', text)) == 3, kind
  for name in ("gkd_divergence_fwd", "gkd_divergence_dhidden", "gkd_divergence_dunembed"):
    assert name in text
  # No [N, V] buffer: temporaries are a few padded copies and [N] vectors, not N*V*4 bytes.
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < 0.02 * n * v * 4 + 2 * v * max(ds, dt) * 4, (kind, temp)
  return compiled


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_compiles_for_v5p_at_gemma2_shapes(kind):
  _compile("v5p", kind, GEMMA2)


@pytest.mark.parametrize("chip", ["v5e", "v6e"])
@pytest.mark.parametrize("kind", ["jsd", "skew_reverse_kl"])
def test_kernels_compile_for_v5e_and_v6e_at_gemma2_shapes(chip, kind):
  _compile(chip, kind, GEMMA2)


@pytest.mark.parametrize("chip", sorted(TOPOLOGIES))
@pytest.mark.parametrize("shapes", [LLAMA3, QWEN3], ids=["llama3_V128256", "qwen3_V151936"])
@pytest.mark.parametrize("kind", ["jsd", "sampled_reverse_kl"])
def test_kernels_compile_at_ragged_vocabularies(chip, shapes, kind):
  _compile(chip, kind, shapes)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["reverse_kl", "jsd"])
def test_float32_student_compiles_within_v5p_vmem(kind):
  # 256 x 512 blocks of float32 operands need ~77 MiB of VMEM (HIGHEST-precision matmuls are split
  # into bf16 passes), more than v5p's 64 MiB: the blocks must shrink for float32.
  _compile("v5p", kind, GEMMA2, student_dtype=jnp.float32)


@pytest.mark.parametrize("chip", sorted(TOPOLOGIES))
@pytest.mark.parametrize(
    "shapes, dtypes",
    [
        (GEMMA2, (2, 2)),
        (GEMMA2, (4, 2)),
        (GEMMA2, (4, 4)),
        (LLAMA3, (2, 2)),
        (QWEN3, (4, 2)),
        (dict(N=8192, V=256000, Ds=3584, Dt=4608), (4, 2)),  # Gemma 2 9B student f32, 27B teacher
    ],
)
def test_requested_vmem_limit_fits_the_chip(chip, shapes, dtypes):
  version = pltpu.ChipVersion(chip)
  vmem = pltpu.get_tpu_info_for_chip(version, 1).vmem_capacity_bytes  # per TensorCore
  bn, bv = pallas.block_sizes(
      shapes["N"], shapes["V"], dims=(shapes["Ds"], shapes["Dt"]), itemsizes=dtypes
  )
  need = pallas_tpu.vmem_bytes(bn, bv, shapes["Ds"], shapes["Dt"], *dtypes)
  limit = pallas_tpu.vmem_limit(need)
  assert need <= limit <= vmem, (bn, bv, need, limit, vmem)
  assert bn >= 128 and bv >= 128  # still MXU-sized tiles


def test_blocks_too_large_for_any_chip_are_a_clear_error():
  hs = jnp.zeros((16, 4096), jnp.float32)
  ws = jnp.zeros((4096, 4096), jnp.float32)
  with pytest.raises(ValueError, match="VMEM.*token_block / vocab_block"):
    jax.eval_shape(
        lambda a, b: kernels.fused_linear_divergence(
            a,
            b,
            a,
            b,
            kind="jsd",
            impl="pallas",
            interpret=False,
            token_block=1024,
            vocab_block=4096,
        ),
        hs,
        ws,
    )
