"""Gemma 2 27B (instruction-tuned) distilled into Gemma 2 2B.

  gkd-jax plan --config=configs/gemma2_27b_to_2b.py --topology=v5p-128   # does it fit?
  gkd-jax train --config=configs/gemma2_27b_to_2b.py --workdir=/mnt/bucket/runs/gemma2_27b_to_2b --multihost \\
      --config.student.path=/ckpt/gemma-2-2b-it --config.teacher.path=/ckpt/gemma-2-27b-it \\
      --config.data.train_path=/data/train.jsonl --config.data.eval_path=/data/eval.jsonl

Everything else (on-policy reverse KL, batch 256 of 512+512 tokens, FSDP over every chip) is
configs/gemma2_9b_to_2b.py; see it for the launch on a TPU pod. The 27B teacher in bf16 is 54 GB of
weights, sharded over the slice with the student.
"""

from configs import gemma2_9b_to_2b


def get_config():
  c = gemma2_9b_to_2b.get_config()
  c.student.path, c.student.preset = "/path/to/gemma-2-2b-it", "gemma2_2b"  # placeholder path
  c.student.dtype = "float32"
  c.teacher.path, c.teacher.preset = "/path/to/gemma-2-27b-it", "gemma2_27b"  # placeholder path
  c.data.chat_family = "gemma"
  return c
