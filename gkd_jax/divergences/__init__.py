"""Token-level divergences between a student's and a teacher's next-token distributions.

  dense.py  the specification of every kind in code (full-vocabulary float32 formulas): what the
            streaming kernels (gkd_jax.kernels) are tested against
  topk.py   the same divergences against a teacher known only by its top-k log-probabilities (a
            teacher cache), with the tail as one (k+1)-th bucket

Imports go one way: topk uses dense; the kernels use both; neither uses the kernels.
"""

from gkd_jax.divergences.dense import (
    KINDS,
    DivergenceSpec,
    as_spec,
    log_softmax,
    masked_mean,
    softcap_and_scale,
    token_divergence,
    validate_divergence_args,
)
from gkd_jax.divergences.topk import topk_divergence

__all__ = [
    "KINDS",
    "DivergenceSpec",
    "as_spec",
    "log_softmax",
    "masked_mean",
    "softcap_and_scale",
    "token_divergence",
    "topk_divergence",
    "validate_divergence_args",
]
