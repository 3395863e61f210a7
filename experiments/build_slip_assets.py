"""Rebuilds everything in gkd_jax/tasks/assets/slip_addition/, from scratch, with gkd-jax itself.

  .venv/bin/python experiments/build_slip_assets.py [--only=data|teacher|student_init]

1. data: eval.jsonl (held-out problems, clean completions), train.jsonl (the clean supervised data the
   student is distilled on) and tokenizer.model (the arithmetic task's character tokenizer); the
   teacher's corpus (slipped and corrected completions, `slip_addition.slipped_completion`) is made in
   the scratch dir only. All three problem sets are disjoint.
2. teacher: a 4-layer model (128 wide, 0.79M parameters) trained by SFT on the slipped corpus, from
   random initialisation.
3. student_init: a 2-layer model (32 wide, 26k parameters) trained by SFT on the clean data until
   its accuracy plateaus; the shared starting point of every method in configs/paper_table.py.
The numbers each run reached are printed and written to build_log.json in the assets folder.

How the committed checkpoints were made (2 CPU cores): the teacher ran 600 steps with
--teacher_steps=3000 and was then resumed from its step-600 checkpoint with --teacher_steps=1800
(the cosine schedule shortened mid-run, to fit the time available): held-out greedy exact match
0.998, 0.841 at temperature 1. The student size was calibrated on plateau accuracy (SFT, 2-3k steps):
1 layer x 64: 0.002; 2 x 32: 0.161 (committed; 0.150 at 2400 steps, 0.161 at 3000); 2 x 40: 0.058
at 1920 steps; 2 x 48: 0.915 at 1440 steps; 2 x 64: 0.858 at 1800 steps. Between 32 and 48 wide the
plateau jumps from ~16% to >90%; nothing in the 40-70% range was found in the time available.
"""

import json
import os
import random
import runpy
import shutil
import tempfile

from absl import app, flags
import jax

from gkd_jax import models, train
from gkd_jax.models.hf import save_pretrained
from gkd_jax.tasks import asset_dir, slip_addition
from gkd_jax.tokenizers import load_tokenizer
from small_llama import model_config  # beside this script

_ONLY = flags.DEFINE_enum("only", "", ["", "data", "teacher", "student_init"], "Rebuild one part.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where the SFT runs write (default: a temp dir).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the problem generator.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 10000, "Clean distillation problems.")
_NUM_EVAL = flags.DEFINE_integer("num_eval", 1000, "Held-out problems.")
_NUM_TEACHER = flags.DEFINE_integer("num_teacher", 60000, "Problems of the teacher's corpus.")
_SLIP_RATE = flags.DEFINE_float("slip_rate", 0.1, "Per-step slip probability of the corpus.")
_MIN_DIGITS = flags.DEFINE_integer("min_digits", 3, "Fewest columns of a problem.")
_MAX_DIGITS = flags.DEFINE_integer("max_digits", 7, "Most columns of a problem.")
_TEACHER_STEPS = flags.DEFINE_integer("teacher_steps", 1800, "SFT steps of the teacher.")
_STUDENT_STEPS = flags.DEFINE_integer("student_steps", 3000, "SFT steps of the student init.")
_STUDENT_LAYERS = flags.DEFINE_integer("student_layers", 2, "Student depth.")
_STUDENT_DIM = flags.DEFINE_integer("student_dim", 32, "Student width.")
_STUDENT_NAME = flags.DEFINE_string("student_name", "student_init", "Asset folder of the student.")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
ASSETS = asset_dir("slip_addition")


def write_data(scratch):
  d_min, d_max = _MIN_DIGITS.value, _MAX_DIGITS.value
  eval_pairs = slip_addition.generate_problems(_NUM_EVAL.value, _SEED.value + 1, d_min, d_max)
  train_pairs = slip_addition.generate_problems(
      _NUM_TRAIN.value, _SEED.value, d_min, d_max, exclude=eval_pairs
  )
  teacher_pairs = slip_addition.generate_problems(
      _NUM_TEACHER.value, _SEED.value + 2, d_min, d_max, exclude=eval_pairs + train_pairs
  )
  clean = lambda pairs: [
      {"prompt": slip_addition.make_prompt(a, b), "completion": slip_addition.make_completion(a, b)}
      for a, b in pairs
  ]
  os.makedirs(ASSETS, exist_ok=True)
  slip_addition.write_jsonl(os.path.join(ASSETS, "eval.jsonl"), clean(eval_pairs))
  slip_addition.write_jsonl(os.path.join(ASSETS, "train.jsonl"), clean(train_pairs))
  with open(os.path.join(ASSETS, "tokenizer.model"), "wb") as f:
    f.write(slip_addition.build_tokenizer_model())
  rng = random.Random(_SEED.value + 3)
  corpus = [
      {
          "prompt": slip_addition.make_prompt(a, b),
          "completion": slip_addition.slipped_completion(a, b, rng, _SLIP_RATE.value),
      }
      for a, b in teacher_pairs
  ]
  slip_addition.write_jsonl(os.path.join(scratch, "teacher_corpus.jsonl"), corpus)


def sft(name, cfg, steps, train_path, scratch, learning_rate=3e-3):
  """Random init -> SFT with the trainer (cosine schedule) -> HF checkpoint in the assets folder."""
  model = models.build(cfg)
  init_dir = os.path.join(scratch, f"{name}_random")
  save_pretrained(init_dir, model, models.init(model, jax.random.key(len(name))))
  config = runpy.run_path(os.path.join(ROOT, "configs", "paper_table.py"))["get_config"]()
  config.student.path = init_dir
  config.teacher.path = ""
  config.data.train_path = train_path
  config.gkd.lmbda = 0.0
  config.gkd.divergence_weight = 0.0
  config.gkd.ce_weight = 1.0
  config.optim.learning_rate = learning_rate
  config.optim.schedule = "cosine"
  config.optim.warmup_steps = min(100, steps // 10)
  config.train.num_steps = steps
  config.train.batch_size = 64
  config.train.log_every = 50
  config.train.eval_every = max(steps // 5, 1)
  config.train.checkpoint_every = max(steps // 5, 1)
  config.eval.num_samples = 1
  workdir = os.path.join(scratch, name)
  summary = train.train(config, workdir)
  target = os.path.join(ASSETS, name)
  shutil.rmtree(target, ignore_errors=True)
  shutil.copytree(os.path.join(workdir, "student"), target)
  log_path = os.path.join(ASSETS, "build_log.json")
  log = {}
  if os.path.exists(log_path):
    with open(log_path) as f:
      log = json.load(f)
  log[name] = {
      "parameters": models.num_params(model),
      "layers": cfg.num_layers,
      "dim": cfg.embed_dim,
      "sft_steps": steps,
      "train_path": os.path.basename(train_path),
      "eval_after": summary.get("eval_after"),
  }
  with open(log_path, "w") as f:
    json.dump(log, f, indent=1, sort_keys=True)
  print(
      f"{name}: {models.num_params(model)} parameters, greedy accuracy "
      f"{summary['student_after']}"
  )


def main(_):
  with tempfile.TemporaryDirectory() as tmp:
    scratch = _WORKDIR.value or tmp
    os.makedirs(scratch, exist_ok=True)
    if _ONLY.value in ("", "data") or not os.path.exists(
        os.path.join(scratch, "teacher_corpus.jsonl")
    ):
      write_data(scratch)
    tokenizer = load_tokenizer(os.path.join(ASSETS, "tokenizer.model"))
    if _ONLY.value in ("", "teacher"):
      sft(
          "teacher",
          model_config(tokenizer, 4, 128, 4, 2),
          _TEACHER_STEPS.value,
          os.path.join(scratch, "teacher_corpus.jsonl"),
          scratch,
      )
    if _ONLY.value in ("", "student_init"):
      sft(
          _STUDENT_NAME.value,
          model_config(tokenizer, _STUDENT_LAYERS.value, _STUDENT_DIM.value, 4, 2),
          _STUDENT_STEPS.value,
          os.path.join(ASSETS, "train.jsonl"),
          scratch,
      )


if __name__ == "__main__":
  app.run(main)
