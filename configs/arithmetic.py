"""The first bundled task, kept as a negative control: step-by-step addition without slips.

  gkd-jax train --config=configs/arithmetic.py --workdir=workdirs/arithmetic

On this task on-policy distillation has nothing to add: the teacher is deterministic (its soft labels,
its samples and the dataset carry the same information) and does not recover from the student's
mistakes, and the student is not capacity-limited (plain SFT takes it to ~95%). See
configs/paper_table.py for the task built for the method, and experiments/paper_table.py --control.

A 4-layer teacher (trained by SFT, ~0.8M parameters) and a weaker 2-layer student (briefly SFT'd, so it
makes its own mistakes) are bundled in gkd_jax/tasks/assets/arithmetic/ together with the task's
sentencepiece tokenizer and data; experiments/build_demo_models.py rebuilds them. The run
ends with a table of teacher accuracy and student accuracy before and after distillation (exact match of
the final sum, greedy decoding, held-out problems). Fits in a few minutes on 2 CPU cores.
"""

import os

from configs import default
from gkd_jax import tasks


def get_config():
  c = default.get_config()
  assets = tasks.asset_dir("arithmetic")
  c.student.path = os.path.join(assets, "student_init")
  c.student.dtype = "float32"
  c.teacher.path = os.path.join(assets, "teacher")
  c.teacher.dtype = "float32"
  c.tokenizer.path = os.path.join(assets, "tokenizer.model")
  c.data.train_path = os.path.join(assets, "train.jsonl")
  c.data.eval_path = os.path.join(assets, "eval.jsonl")
  c.data.max_prompt_len = 16
  c.data.max_completion_len = 44

  c.gkd.lmbda = 1.0  # fully on-policy: the student learns on its own (mistaken) step-by-step sums
  c.gkd.loss = (
      "forward_kl"  # the paper's best on arithmetic reasoning (GSM8K); JSD(0.5) is slower here
  )
  c.sampling.temperature = 1.0
  c.sampling.max_new_tokens = 44

  c.optim.learning_rate = 3e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 20
  c.train.batch_size = 32
  c.train.num_steps = 1000
  c.train.log_every = 10
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  c.eval.batch_size = 96
  c.eval.num_examples = 480
  c.eval.max_new_tokens = 44
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  c.task.name = "arithmetic"
  return c
