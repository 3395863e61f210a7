"""TRL's GKDTrainer.generalized_jsd_loss on random logits (reference fixture for our `jsd`).

  .refvenv/bin/python experiments/make_trl_fixtures.py      (or: make fixtures)

For beta in {0, 0.1, 0.5, 0.9, 1} and temperature in {0.5, 1, 2}: TRL's per-token JSD
(reduction="none", summed over the vocabulary), its "batchmean" loss with -100 labels, and the gradient
of sum(ct * per-token JSD) w.r.t. the student logits (torch autograd, float64). TRL special-cases
beta=0 as KL(p_T || p_S) and beta=1 as KL(p_S || p_T), exactly our convention; TRL has no
soft-capping (the model applies it before), so the fixture has none. Writes
tests/fixtures/trl/generalized_jsd.npz; tests/test_divergences_trl.py
compares gkd_jax.divergences.token_divergence(kind="jsd") and the streaming kernels against it.
"""

import os

import numpy as np
import torch
import trl
from trl.experimental.gkd.gkd_trainer import GKDTrainer

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "trl", "generalized_jsd.npz")
BETAS = (0.0, 0.1, 0.5, 0.9, 1.0)
TAUS = (0.5, 1.0, 2.0)


def main():
  rng = np.random.default_rng(20240613)
  B, T, V = 2, 3, 11
  student = (3.0 * rng.normal(size=(B, T, V))).astype(np.float32)
  teacher = (3.0 * rng.normal(size=(B, T, V))).astype(np.float32)
  labels = rng.integers(0, V, size=(B, T))
  labels[0, 0] = labels[1, 2] = -100
  ct = rng.uniform(0.5, 1.5, size=(B, T))
  per_token, batchmean, grads = [], [], []
  for beta in BETAS:
    for tau in TAUS:
      s = torch.tensor(student, dtype=torch.float64, requires_grad=True)
      t = torch.tensor(teacher, dtype=torch.float64)
      jsd = GKDTrainer.generalized_jsd_loss(s, t, beta=beta, temperature=tau, reduction="none")
      tok = jsd.sum(-1)
      (g,) = torch.autograd.grad((tok * torch.tensor(ct)).sum(), s)
      loss = GKDTrainer.generalized_jsd_loss(s, t, labels=torch.tensor(labels), beta=beta,
                                             temperature=tau, reduction="batchmean")
      per_token.append(tok.detach().numpy())
      grads.append(g.numpy())
      batchmean.append(float(loss.detach()))
  os.makedirs(os.path.dirname(OUT), exist_ok=True)
  np.savez(OUT, student=student, teacher=teacher, labels=labels, ct=ct, betas=np.array(BETAS),
           taus=np.array(TAUS), per_token=np.array(per_token), batchmean=np.array(batchmean),
           grads=np.array(grads), trl_version=np.array(trl.__version__),
           torch_version=np.array(torch.__version__))
  print(f"wrote {OUT} (trl {trl.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
  main()
