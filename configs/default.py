"""Every configuration field of gkd_jax, with its default and meaning. Other configs start from this.

  gkd-jax train --config=configs/default.py --workdir=/tmp/run \
      --config.student.path=/ckpt/student --config.teacher.path=/ckpt/teacher \
      --config.data.train_path=train.jsonl --config.data.eval_path=eval.jsonl

Any field can be overridden on the command line with --config.<group>.<field>=VALUE.
`gkd_jax.config_validation.validate(config)` checks every field at start-up and names the first bad
one. The defaults below are a sensible on-policy GKD run (λ=1, JSD(0.5)); the paths are empty and must
be set (see configs/demo.py for a complete runnable example on the bundled arithmetic task).
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  """The documented default configuration."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds parameter init, data shuffling, the λ coin flips and sampling.

  # The model being trained.
  c.student = ml_collections.ConfigDict()
  c.student.path = ""  # HF checkpoint dir (config.json + *.safetensors); "" = build from `preset`.
  c.student.preset = ""  # ModelConfig preset (gkd_jax.models.PRESETS), used only when path == ""
  #                        (and by `gkd-jax plan` when path has no config.json).
  c.student.dtype = "float32"  # "float32" | "bfloat16": dtype of the master weights.

  # The frozen model being distilled from. It lives on the same mesh, in its own dtype.
  c.teacher = ml_collections.ConfigDict()
  c.teacher.path = ""  # HF checkpoint dir; required unless gkd.divergence_weight == 0 (SFT) and
  #                      not gkd.seq_kd.
  c.teacher.dtype = "bfloat16"  # "float32" | "bfloat16".
  # ModelConfig preset; only `gkd-jax plan` uses it (when path has no config.json).
  c.teacher.preset = ""  # e.g. "gemma2_9b"; see gkd_jax/models/presets.py.

  # How the decoders (student and teacher) run their layers.
  c.model = ml_collections.ConfigDict()
  # One lax.scan over layer parameters stacked on a leading `layers` axis instead of a Python loop:
  # XLA compiles one block body (compile time stops growing with depth) and under FSDP gathers one
  # layer's weights at a time. Same numbers either way, except adafactor (its parameter scale and
  # update clipping would span all layers: refused). "auto": scan on TPU and GPU, loop on CPU (where
  # the scanned step measured 1.1-1.5x slower, benchmarks/results/scan_layers_cpu.md) and for
  # adafactor. A run's checkpoints hold the form it trained with (the workdir records it); exported
  # HF/GGUF files are per layer either way.
  c.model.scan_layers = config_dict.FieldReference("auto", field_type=object)  # True|False|"auto"

  # Several teachers instead of `teacher`: each example is distilled from the teacher its record
  # names ({"prompt": ..., "teacher": NAME}); every batch holds one teacher's records, so a step runs
  # that teacher only. Entries: c.teachers.NAME = ConfigDict(dict(path=..., dtype="bfloat16",
  # weight=1.0)) (weight multiplies gkd.divergence_weight on its rows). All share the student's
  # vocabulary. One entry is the same run as `teacher` with its path and dtype.
  c.teachers = ml_collections.ConfigDict()
  c.default_teacher = ""  # Teacher of records without "teacher" ("" = they must name one).

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""  # Dir or file with tokenizer.model / tokenizer.json; "" = student.path.

  # Data: JSONL, one {"prompt", "completion"?} or {"messages": [...]} per line (gkd_jax.data).
  c.data = ml_collections.ConfigDict()
  c.data.train_path = ""  # Training records.
  c.data.eval_path = ""  # Held-out records for evaluation ("" = no periodic evaluation).
  c.data.max_prompt_len = 128  # Prompt tokens per row; longer prompts keep their last tokens.
  c.data.max_completion_len = 128  # Completion tokens per row incl. EOS; longer ones are cut.
  c.data.shuffle = True  # Shuffle every epoch (deterministically, from `seed`).
  c.data.num_epochs = -1  # Passes over the training data; -1 = repeat forever (stop at num_steps).
  c.data.worker_count = 0  # Grain worker processes for tokenization; 0 = in the main process.
  c.data.chat_family = ""  # Chats without a tokenizer chat template: gemma|llama3|chatml|qwen2.5.

  # The GKD algorithm (README: "The algorithm and its settings").
  c.gkd = ml_collections.ConfigDict()
  c.gkd.lmbda = 1.0  # [0, 1]: probability that completions are the student's own samples.
  c.gkd.mixing = "batch"  # "batch": one coin per batch (paper, TRL); "example": round(λ·B) rows.
  c.gkd.seq_kd = False  # Off-policy completions are sampled from the teacher instead of the data.
  c.gkd.loss = "jsd"  # forward_kl | reverse_kl | jsd | skew_forward_kl | skew_reverse_kl | tvd |
  #                     sampled_reverse_kl
  c.gkd.beta = 0.5  # [0, 1], jsd only: 0 = forward KL, 1 = reverse KL (paper/TRL convention).
  c.gkd.alpha = 0.1  # [0, 1], skew_* only: weight of the skewing distribution in the mixture.
  c.gkd.temperature = 1.0  # > 0: logits are divided by it before the divergence.
  c.gkd.divergence_weight = 1.0  # >= 0: weight of the divergence term (0 = plain SFT).
  c.gkd.ce_weight = 0.0  # >= 0: weight of cross-entropy on dataset completions (SFT term).
  c.gkd.teacher_cache = ""  # dir of `gkd-jax cache-teacher` (λ=0 only): no teacher in memory.
  c.gkd.teacher_cache_k = 64  # >= 1: teacher top-k tokens the cache holds (checked against it).
  c.gkd.kernel_impl = "auto"  # "auto" | "pallas" | "chunked" | "reference" divergence kernel.

  # Sampling of on-policy (student) and SeqKD (teacher) completions during training.
  c.sampling = ml_collections.ConfigDict()
  c.sampling.temperature = 1.0  # >= 0; 0 = greedy.
  c.sampling.top_k = 0  # >= 0; 0 = no top-k filtering.
  c.sampling.top_p = 1.0  # (0, 1]; 1 = no nucleus filtering.
  c.sampling.max_new_tokens = 128  # > 0; at most data.max_completion_len.

  # Optimizer (optax).
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"  # "adamw" | "adafactor" | "sgd".
  c.optim.learning_rate = 1e-5  # > 0: peak learning rate.
  c.optim.schedule = "cosine"  # "constant" | "cosine" | "linear" decay after warmup.
  c.optim.warmup_steps = 0  # >= 0: linear warmup from 0 to the peak.
  c.optim.weight_decay = 0.0  # >= 0: decoupled weight decay (adamw).
  c.optim.b1 = 0.9  # [0, 1): first-moment decay (adamw; momentum for sgd).
  c.optim.b2 = 0.999  # [0, 1): second-moment decay (adamw).
  c.optim.grad_clip = 1.0  # >= 0: clip the global gradient norm to this; 0 = off.
  c.optim.grad_accum_steps = 1  # >= 1: micro-steps per update (mean of the micro-steps' gradients,
  #                               each a token mean of its own micro-batch).

  # The training loop.
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 8  # > 0: global batch (all processes); divisible by mesh data*fsdp.
  c.train.num_steps = 1000  # > 0: training steps (micro-steps when grad_accum_steps > 1).
  c.train.log_every = 10  # > 0: write metrics every this many steps.
  c.train.eval_every = 200  # >= 0: evaluate every this many steps; 0 = only before and after.
  c.train.checkpoint_every = 200  # > 0: save a checkpoint every this many steps.
  c.train.keep_checkpoints = 3  # > 0: keep the newest N checkpoints.
  c.train.async_checkpoints = True  # Save in a background thread while training continues.
  c.train.preemption_check_every = 10  # >= 1: with several processes, check for SIGTERM/preemption
  #                                     every this many steps (an all-gather), all stopping together.
  c.train.export_final = True  # Write the final student as an HF checkpoint to WORKDIR/student.
  # What each student layer keeps for the backward pass (gkd_jax/remat.py), most memory first:
  # "none" (= False): everything; "save_dots": the weight matmuls' outputs, the rest recomputed;
  # "save_dots_except_mlp": the attention projections' outputs, the MLP recomputed; "full"
  # (= True): the layer's input only, the whole layer recomputed (~10% of a step); "offload"
  # (TPU/GPU): save_dots staged in host memory. "auto": "none" when the step fits, else "full".
  c.train.remat = config_dict.FieldReference("auto", field_type=object)  # a name | True | False
  c.train.max_nonfinite_steps = 0  # >= 0: a step with a non-finite loss/gradient is never applied;
  #                                  0 = stop the run at the first; N = skip up to N, then stop.

  # Evaluation: held-out divergence and the task metrics (greedy, optionally also sampled).
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 8  # > 0: global eval batch; divisible by mesh data*fsdp.
  c.eval.num_examples = 256  # > 0: eval examples used per evaluation.
  c.eval.max_new_tokens = 128  # > 0: decoding length for the task metric.
  c.eval.num_samples = 0  # >= 0: k decodes per prompt at eval.temperature besides greedy
  #                         (task metrics under eval/sampled/..., and pass@k); 0 = greedy only.
  c.eval.temperature = 1.0  # > 0: sampling temperature of those k decodes.
  c.eval.teacher = True  # Also report the teacher's task metrics once, before training.

  # Device mesh ("data", "fsdp", "tensor"); the product must equal the number of devices.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1  # Pure data parallelism (parameters replicated).
  c.mesh.fsdp = -1  # Data parallelism with parameters sharded (ZeRO-3); -1 = all remaining devices.
  c.mesh.tensor = 1  # Tensor (model) parallelism over mlp, heads and vocabulary.

  # Logical axis name -> mesh axes (a name, a tuple of names, or None = replicated).
  c.sharding_rules = (
      ("batch", ("data", "fsdp")),
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("heads", "tensor"),
      ("kv_heads", "tensor"),
      ("head_dim", None),
      ("vocab", "tensor"),
  )

  # The task whose own metric is reported at evaluation.
  c.task = ml_collections.ConfigDict()
  c.task.name = ""  # "arithmetic" (bundled, gkd_jax.tasks) or "" for none.
  return c
