"""Qwen 3 8B distilled into Qwen 3 1.7B.

  gkd-jax plan --config=configs/qwen3_8b_to_1p7b.py --topology=v5p-32   # does it fit?
  gkd-jax train --config=configs/qwen3_8b_to_1p7b.py --workdir=/mnt/bucket/runs/qwen3_8b_to_1p7b --multihost \\
      --config.student.path=/ckpt/Qwen3-1.7B --config.teacher.path=/ckpt/Qwen3-8B \\
      --config.data.train_path=/data/train.jsonl --config.data.eval_path=/data/eval.jsonl

Everything else (on-policy reverse KL, batch 256 of 512+512 tokens, FSDP over every chip) is
configs/gemma2_9b_to_2b.py; see it for the launch on a TPU pod. Qwen's vocabulary (151936) is not a
multiple of the kernels' vocabulary block: the last block is masked.
"""

from configs import gemma2_9b_to_2b


def get_config():
  c = gemma2_9b_to_2b.get_config()
  c.student.path, c.student.preset = "/path/to/Qwen3-1.7B", "qwen3_1.7b"  # placeholder path
  c.student.dtype = "float32"
  c.teacher.path, c.teacher.preset = "/path/to/Qwen3-8B", "qwen3_8b"  # placeholder path
  c.data.chat_family = "chatml"
  return c
