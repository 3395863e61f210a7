"""Rebuilds the arithmetic task's data and tokenizer in gkd_jax/tasks/assets/arithmetic/.

  .venv/bin/python experiments/build_arithmetic_assets.py [--seed 0] [--num_train 5000] [--num_eval 500]

Writes train.jsonl, eval.jsonl (disjoint problems, 2-4 digit operands) and tokenizer.model,
byte-identical for the same seed and sizes. Other files in the folder (the trained teacher and student
checkpoints the demo uses) are left alone.
"""

import argparse
import os

from gkd_jax.tasks import arithmetic, asset_dir


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num_train", type=int, default=5000)
  parser.add_argument("--num_eval", type=int, default=500)
  parser.add_argument("--min_digits", type=int, default=2)
  parser.add_argument("--max_digits", type=int, default=4)
  parser.add_argument("--out", default=asset_dir("arithmetic"))
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  # Eval first so that it never depends on the train size; train excludes every eval problem.
  eval_examples = arithmetic.generate_examples(
      args.num_eval, args.seed + 1, args.min_digits, args.max_digits
  )
  train_examples = arithmetic.generate_examples(
      args.num_train,
      args.seed,
      args.min_digits,
      args.max_digits,
      exclude=[ex["prompt"] for ex in eval_examples],
  )
  arithmetic.write_jsonl(os.path.join(args.out, "train.jsonl"), train_examples)
  arithmetic.write_jsonl(os.path.join(args.out, "eval.jsonl"), eval_examples)
  with open(os.path.join(args.out, "tokenizer.model"), "wb") as f:
    f.write(arithmetic.build_tokenizer_model())
  print(
      f"wrote {len(train_examples)} train, {len(eval_examples)} eval examples and "
      f"tokenizer.model to {args.out}"
  )


if __name__ == "__main__":
  main()
