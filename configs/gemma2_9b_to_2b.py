"""Realistic TPU run: distil Gemma 2 9B (instruction-tuned) into Gemma 2 2B on a v5p-64 slice.

  # on every host of the slice (see experiments/launch_tpu_pod.sh):
  gkd-jax train --config=configs/gemma2_9b_to_2b.py --workdir=/mnt/bucket/runs/g2-9b-2b --multihost \
      --config.student.path=/ckpt/gemma-2-2b-it --config.teacher.path=/ckpt/gemma-2-9b-it \
      --config.data.train_path=/data/train.jsonl --config.data.eval_path=/data/eval.jsonl

Check that it fits before the first TPU hour (compiles on any host, libtpu, no weights):
  gkd-jax plan --config=configs/gemma2_9b_to_2b.py --topology=v5p-64

The workdir must be a path every host sees (a gcsfuse-mounted bucket or NFS, not a gs:// URL).
The paths below are placeholders: set them on the command line (HF checkpoint folders, as released,
copied to local disk or a mounted bucket). v5p-64 = 32 chips: FSDP over all of them for the 2B student's
f32 master weights and optimizer state, the 9B teacher in bf16 on the same mesh. The divergence runs
through the vocabulary-streaming kernel (Gemma's 256k vocabulary never materialises as [N, V] logits).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.student.path = "/path/to/gemma-2-2b-it"  # placeholder: set --config.student.path
  c.student.preset = "gemma2_2b"  # the architecture `gkd-jax plan` compiles (no weights needed)
  c.student.dtype = "float32"
  c.teacher.path = "/path/to/gemma-2-9b-it"  # placeholder: set --config.teacher.path
  c.teacher.preset = "gemma2_9b"
  c.teacher.dtype = "bfloat16"
  c.data.train_path = "/path/to/train.jsonl"  # placeholder: chat records {"messages": [...]}
  c.data.eval_path = "/path/to/eval.jsonl"
  c.data.chat_family = "gemma"
  c.data.max_prompt_len = 512
  c.data.max_completion_len = 512
  c.data.worker_count = 4

  c.gkd.lmbda = 1.0  # on-policy (the paper's best setting for instruction tuning)
  c.gkd.loss = "reverse_kl"
  c.gkd.temperature = 1.0
  c.sampling.temperature = 1.0
  c.sampling.max_new_tokens = 512

  c.optim.learning_rate = 1e-5
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 100
  c.optim.grad_clip = 1.0
  c.train.batch_size = 256
  c.train.num_steps = 5000
  c.train.log_every = 10
  c.train.eval_every = 500
  c.train.checkpoint_every = 250
  c.train.remat = True  # what benchmarks/results/tpu_plans.md planned (its rows fit with remat)
  c.eval.batch_size = 256
  c.eval.num_examples = 1024
  c.eval.max_new_tokens = 512

  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  c.task.name = ""
  return c
