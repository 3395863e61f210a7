"""Llama 3.1 8B Instruct distilled into Llama 3.2 1B Instruct.

  gkd-jax plan --config=configs/llama3_8b_to_1b.py --topology=v5p-32   # does it fit?
  gkd-jax train --config=configs/llama3_8b_to_1b.py --workdir=/mnt/bucket/runs/llama3_8b_to_1b --multihost \\
      --config.student.path=/ckpt/Llama-3.2-1B-Instruct --config.teacher.path=/ckpt/Llama-3.1-8B-Instruct \\
      --config.data.train_path=/data/train.jsonl --config.data.eval_path=/data/eval.jsonl

Everything else (on-policy reverse KL, batch 256 of 512+512 tokens, FSDP over every chip) is
configs/gemma2_9b_to_2b.py; see it for the launch on a TPU pod. Llama 3's vocabulary (128256) is not a
multiple of the kernels' vocabulary block: the last block is masked.
"""

from configs import gemma2_9b_to_2b


def get_config():
  c = gemma2_9b_to_2b.get_config()
  c.student.path, c.student.preset = (
      "/path/to/Llama-3.2-1B-Instruct",
      "llama3.2_1b",
  )  # placeholder path
  c.student.dtype = "float32"
  c.teacher.path, c.teacher.preset = (
      "/path/to/Llama-3.1-8B-Instruct",
      "llama3.1_8b",
  )  # placeholder path
  c.data.chat_family = "llama3"
  return c
