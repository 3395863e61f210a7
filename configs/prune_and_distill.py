"""Recover a depth-pruned SmolLM2-135M-Instruct by distillation from the unpruned model.

  .venv/bin/python experiments/prune_and_distill.py --budget=demo     # what `make demo` runs
  .venv/bin/python experiments/prune_and_distill.py --budget=core     # the full comparison

The experiment writes the teacher as an HF folder, the pruned student (`gkd-jax prune`) and the
teacher's sampled answers (chat records with `completion_ids`, the teacher's own tokens), then
trains each method with this config and the paths it fills in:

  gkd-jax train --config=configs/prune_and_distill.py --workdir=W/runs/on_policy \
      --config.student.path=W/pruned --config.teacher.path=W/teacher \
      --config.data.train_path=W/teacher_answers.jsonl

Methods are settings of it: supervised KD `gkd.lmbda=0` (the teacher's answers), on-policy
`gkd.lmbda=1` (the student's own samples), `gkd.lmbda=0.5`, SFT on the answers
`gkd.divergence_weight=0 gkd.ce_weight=1 gkd.lmbda=0`; divergence JSD(0.9) unless `gkd.loss` says
otherwise. Evaluation (teacher-scored KLs on the student's own samples, ROUGE-L against the teacher,
exact match on the checkable prompts, EOS rate, length, loops) is the experiment's own
(gkd_jax/lm_eval.py), so the trainer's is off. The learning rate is constant after warmup, so a
run's state at step N does not depend on how long it goes on (equal steps and equal time read the
same runs).
"""

from configs import default


def get_config():
  c = default.get_config()
  # What `make demo` prepares (the experiment sets its own workdir's paths).
  c.student.path = "workdirs/demo/pruned"
  c.teacher.path = "workdirs/demo/teacher"
  c.data.train_path = "workdirs/demo/teacher_answers.jsonl"
  c.student.dtype = "float32"
  c.teacher.dtype = "float32"
  c.data.max_prompt_len = 64  # chat-templated prompts: SmolLM2's system turn alone is 20 tokens
  c.data.max_completion_len = 48
  c.data.eval_path = ""  # evaluation is the experiment's (lm_eval)

  c.gkd.lmbda = 1.0
  c.gkd.loss = "jsd"
  c.gkd.beta = 0.9
  c.sampling.temperature = 1.0
  c.sampling.max_new_tokens = 48

  c.optim.learning_rate = 1e-4
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 5
  c.train.batch_size = 8
  c.train.num_steps = 30
  c.train.log_every = 5
  c.train.checkpoint_every = 10
  c.train.keep_checkpoints = 2
  c.train.remat = False
  c.eval.teacher = False
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  return c
