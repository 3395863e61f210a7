"""Gemma 2 27B (instruction-tuned) distilled into Gemma 2 9B.

  gkd-jax plan --config=configs/gemma2_27b_to_9b.py --topology=v5p-32    # does it fit?
  gkd-jax train --config=configs/gemma2_27b_to_9b.py --workdir=/mnt/bucket/runs/gemma2_27b_to_9b --multihost \\
      --config.student.path=/ckpt/gemma-2-9b-it --config.teacher.path=/ckpt/gemma-2-27b-it \\
      --config.data.train_path=/data/train.jsonl --config.data.eval_path=/data/eval.jsonl

Everything else (on-policy reverse KL, batch 256 of 512+512 tokens, FSDP over every chip) is
configs/gemma2_9b_to_2b.py; see it for the launch on a TPU pod. A 9B student in float32 with Adam
moments is ~150 GB of state before activations. The 256 rows of an update are two micro-batches of
128 (`optim.grad_accum_steps=2`, so train.num_steps counts 2 x 5000 micro-steps): at 256 rows per
step the train step needs 122.6 GiB per chip on v5p-32 and 137.0 on v5p-16 (gkd-jax plan, whose
knob re-plan found this fix: 87.2 GiB on v5p-32).
"""

from configs import gemma2_9b_to_2b


def get_config():
  c = gemma2_9b_to_2b.get_config()
  c.student.path, c.student.preset = "/path/to/gemma-2-9b-it", "gemma2_9b"  # placeholder path
  c.student.dtype = "float32"
  c.teacher.path, c.teacher.preset = "/path/to/gemma-2-27b-it", "gemma2_27b"  # placeholder path
  c.data.chat_family = "gemma"
  c.train.batch_size, c.optim.grad_accum_steps = 128, 2
  c.train.num_steps = 2 * c.train.num_steps
  return c
