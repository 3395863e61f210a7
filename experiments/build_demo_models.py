"""Rebuilds the demo's teacher and student-init checkpoints from scratch, with gkd-jax itself.

  .venv/bin/python experiments/build_demo_models.py [--teacher_steps=N] [--student_steps=N]

Both models are trained by SFT (configs/arithmetic.py with gkd.divergence_weight=0, gkd.ce_weight=1) on the
bundled arithmetic data, starting from random initialisation: the 4-layer teacher until it is accurate,
the 2-layer student only briefly so that it still makes its own mistakes, which on-policy distillation
then corrects. The results replace gkd_jax/tasks/assets/arithmetic/{teacher,student_init}.
"""

import os
import runpy
import shutil
import tempfile

from absl import app, flags
import jax

from gkd_jax import models, train
from gkd_jax.models.hf import save_pretrained
from gkd_jax.tokenizers import load_tokenizer
from small_llama import model_config  # beside this script

_TEACHER_STEPS = flags.DEFINE_integer("teacher_steps", 2000, "SFT steps for the teacher.")
_STUDENT_STEPS = flags.DEFINE_integer("student_steps", 400, "SFT steps for the student init.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where the SFT runs write (default: a temp dir).")
_ONLY = flags.DEFINE_enum("only", "", ["", "teacher", "student_init"], "Rebuild only this one.")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


def sft(name, cfg, steps, learning_rate, schedule, scratch):
  """Random init -> SFT with the trainer -> exported HF checkpoint in the assets folder."""
  model = models.build(cfg)
  init_dir = os.path.join(scratch, f"{name}_random")
  save_pretrained(init_dir, model, models.init(model, jax.random.key(len(name))))
  config = runpy.run_path(os.path.join(ROOT, "configs", "demo.py"))["get_config"]()
  config.student.path = init_dir
  config.teacher.path = ""
  config.gkd.lmbda = 0.0
  config.gkd.divergence_weight = 0.0
  config.gkd.ce_weight = 1.0
  config.optim.learning_rate = learning_rate
  config.optim.schedule = schedule
  config.optim.warmup_steps = min(100, steps // 10)
  config.train.num_steps = steps
  config.train.batch_size = 64
  config.train.eval_every = max(steps // 4, 1)
  config.train.checkpoint_every = steps
  workdir = os.path.join(scratch, name)
  summary = train.train(config, workdir)
  target = os.path.join(os.path.dirname(config.data.train_path), name)
  shutil.rmtree(target, ignore_errors=True)
  shutil.copytree(os.path.join(workdir, "student"), target)
  print(f"{name}: {models.num_params(model)} parameters, accuracy {summary['student_after']}")


def main(_):
  assets = os.path.join(ROOT, "gkd_jax", "tasks", "assets", "arithmetic")
  tokenizer = load_tokenizer(os.path.join(assets, "tokenizer.model"))
  with tempfile.TemporaryDirectory() as tmp:
    scratch = _WORKDIR.value or tmp
    if _ONLY.value in ("", "teacher"):
      sft(
          "teacher",
          model_config(tokenizer, 4, 128, 4, 2),
          _TEACHER_STEPS.value,
          3e-3,
          "cosine",
          scratch,
      )
    if _ONLY.value in ("", "student_init"):
      # Stopped mid-way (constant LR, no decay): the student has learnt the format and some sums.
      sft(
          "student_init",
          model_config(tokenizer, 2, 64, 4, 2),
          _STUDENT_STEPS.value,
          3e-3,
          "constant",
          scratch,
      )


if __name__ == "__main__":
  app.run(main)
