"""The GKD paper's comparison in miniature, on the bundled slip-addition task.

  gkd-jax train --config=configs/paper_table.py --workdir=workdirs/pt/onpolicy_fkl
  gkd-jax train --config=configs/paper_table.py --workdir=workdirs/pt/kd --config.gkd.lmbda=0
  .venv/bin/python experiments/paper_table.py      # every method x 3 seeds, tables and plots

The teacher (gkd_jax/tasks/assets/slip_addition/teacher) was trained on a corpus where ~10% of the
steps slip and are corrected in place ("7+8+1=15/16"), so it knows how to recover from a wrong value;
the student's distillation data (train.jsonl) is clean; the student starts from an SFT checkpoint on
that clean data (student_init, the shared initialisation of every method). Every method is a setting
of this config: SFT `gkd.divergence_weight=0 gkd.ce_weight=1 gkd.lmbda=0`, supervised KD
`gkd.lmbda=0`, SeqKD `gkd.lmbda=0 gkd.seq_kd=True`, on-policy `gkd.lmbda=1` (the default here) or
0.5, and the divergence via `gkd.loss`/`gkd.beta`. summary.json holds `student_after` (greedy exact
match) and, under eval_after, per-difficulty accuracy, accuracy at temperature 1 with
`eval.num_samples` samples per prompt, the repair rate of wrong values and the first error's position.
The learning rate is constant after warmup so that a run's accuracy at step N does not depend on how
long it goes on (equal-steps and equal-time comparisons read the same runs).
"""

import os

from configs import default
from gkd_jax import tasks


def get_config():
  c = default.get_config()
  assets = tasks.asset_dir("slip_addition")
  c.student.path = os.path.join(assets, "student_init")
  c.student.dtype = "float32"
  c.teacher.path = os.path.join(assets, "teacher")
  c.teacher.dtype = "float32"
  c.tokenizer.path = os.path.join(assets, "tokenizer.model")
  c.data.train_path = os.path.join(assets, "train.jsonl")
  c.data.eval_path = os.path.join(assets, "eval.jsonl")
  c.data.max_prompt_len = 24
  c.data.max_completion_len = 88

  c.gkd.lmbda = 1.0
  c.gkd.loss = "forward_kl"
  c.sampling.temperature = 1.0
  c.sampling.max_new_tokens = 88

  c.optim.learning_rate = 1e-3
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 10
  c.train.batch_size = 32
  c.train.num_steps = 300
  c.train.log_every = 10
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  c.train.remat = False
  c.eval.batch_size = 200
  c.eval.num_examples = 1000
  c.eval.max_new_tokens = 88
  c.eval.num_samples = 2
  c.eval.temperature = 1.0
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  c.task.name = "slip_addition"
  return c
