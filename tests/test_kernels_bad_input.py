"""Bad input to the kernels: one ValueError naming the argument and its value."""

import jax.numpy as jnp
import numpy as np
import pytest

from gkd_jax import kernels


def _args(n=3, ds=4, dt=5, v=7, vt=None):
  r = np.random.default_rng(0)
  return (
      jnp.asarray(r.normal(size=(n, ds)), jnp.float32),
      jnp.asarray(r.normal(size=(ds, v)), jnp.float32),
      jnp.asarray(r.normal(size=(n, dt)), jnp.float32),
      jnp.asarray(r.normal(size=(dt, vt or v)), jnp.float32),
  )


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(kind="jsd", beta=1.5), r"beta=1\.5"),
        (dict(kind="jsd", beta=-0.5), r"beta=-0\.5"),
        (dict(kind="skew_reverse_kl", alpha=1.01), r"alpha=1\.01"),
        (dict(kind="skew_forward_kl", alpha=-1), r"alpha=-1"),
        (dict(kind="jsd", temperature=0), r"temperature=0"),
        (dict(kind="jsd", temperature=-2.0), r"temperature=-2\.0"),
        (dict(kind="jsd", teacher_softcap=-1.0), r"teacher_softcap=-1\.0"),
        (dict(kind="cross_entropy"), r"kind='cross_entropy'"),
        (dict(kind="sampled_reverse_kl"), r"tokens=None"),
        (dict(kind="jsd", impl="cuda"), r"impl='cuda'"),
        (dict(kind="jsd", impl="chunked", vocab_block=0), r"vocab_block=0"),
    ],
)
@pytest.mark.parametrize("entry", ["fused", "logits"])
def test_bad_hyperparameters(kwargs, needle, entry):
  hs, ws, ht, wt = _args()
  with pytest.raises(ValueError, match=needle):
    if entry == "fused":
      kernels.fused_linear_divergence(hs, ws, ht, wt, **kwargs)
    else:
      kernels.vocab_divergence(hs @ ws, ht @ wt, **kwargs)


def test_vocabulary_mismatch():
  hs, ws, ht, wt = _args(v=7, vt=8)
  with pytest.raises(ValueError, match="student_vocab=7, teacher_vocab=8"):
    kernels.fused_linear_divergence(hs, ws, ht, wt, kind="forward_kl")
  with pytest.raises(ValueError, match="student_vocab=7, teacher_vocab=8"):
    kernels.vocab_divergence(hs @ ws, ht @ wt, kind="forward_kl")


def test_shape_mismatches():
  hs, ws, ht, wt = _args()
  with pytest.raises(
      ValueError, match=r"student_hidden.shape=\(3, 4\) does not match student_unembed"
  ):
    kernels.fused_linear_divergence(hs, ws[:3], ht, wt, kind="jsd")
  with pytest.raises(
      ValueError, match=r"teacher_hidden.shape=\(3, 5\) does not match teacher_unembed"
  ):
    kernels.fused_linear_divergence(hs, ws, ht, wt[:4], kind="jsd")
  with pytest.raises(ValueError, match="different numbers of tokens"):
    kernels.fused_linear_divergence(hs, ws, ht[:2], wt, kind="jsd")
  with pytest.raises(ValueError, match=r"student_hidden.shape=\(3, 4, 1\) must have 2 dimensions"):
    kernels.fused_linear_divergence(hs[..., None], ws, ht, wt, kind="jsd")
  with pytest.raises(ValueError, match=r"tokens.shape=\(2,\)"):
    kernels.fused_linear_divergence(
        hs, ws, ht, wt, kind="sampled_reverse_kl", tokens=jnp.zeros(2, int)
    )
  with pytest.raises(
      ValueError, match=r"student_logits.shape=\(3, 7\) != teacher_logits.shape=\(2, 7\)"
  ):
    kernels.vocab_divergence(hs @ ws, (ht @ wt)[:2], kind="jsd")
