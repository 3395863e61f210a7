"""The real models and batch of `gkd_step_vs_trl.py --real` (project venv: jax, no torch).

Teacher: SmolLM2-135M-Instruct (Llama, 30 layers x 576, V=49152) as a float32 HF folder, written
by `gkd_jax.convert.gguf_to_hf` from the GGUF `make models` fetches (its weights are the exact
values the Q4_1 file encodes). Student: the teacher pruned to 15 layers by block importance on the
first 64 bundled training prompts (`gkd_jax.prune_checkpoint`), the init `make demo` trains. Both
are read from workdirs/demo/{teacher,pruned} when `make demo` has written them, else made once in
.cache/gkd_step_vs_trl/ with the same two functions, or given as --teacher/--student.

Batch: the first B prompts of the bundled instruction set (tasks/assets/instructions/train.jsonl)
through the trainer's own per-record transform (`data.TokenizeAndPad`: the tokenizer's chat
template, left-padded to P with a prompt mask), so both sides see the prompts `make demo` trains
on, padding included. The fixed completion of the loss check and of the loss + update half: the
next records' instruction texts, tokenized and cut into B rows of exactly N tokens (real text, no
padding, no end token).

The loss check at step 2: transformers builds Llama's `embed_tokens` with `padding_idx =
pad_token_id`, and SmolLM2's pad token is `<|im_end|>` (id 2), which every chat prompt holds twice;
torch's embedding backward skips that id, so TRL's update leaves the row's input-side gradient out
and gkd_jax's does not. Measured once (one λ=0 update each on this batch, student tensors compared
entry by entry): embedding row 2 was the only difference beyond rounding (update difference 2.8e-3
against an update of norm 2.4e-3; elsewhere a few 1e-5 of the entries, those with gradients at
rounding level, flipped their sign-like first Adam step), and with `padding_idx = None` TRL's
step-1/2 losses were 0.22651964 / 0.21141195 against gkd_jax's 0.22651875 / 0.21141189 (with it,
TRL's step 2 is 0.21132837). Rounding alone moves step 2 by about 1e-6 here (gkd_jax's own weights
scaled by 1 + 1e-7 N(0, 1)). The benchmark keeps TRL as it is: the timing does not depend on it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "workdirs" / "demo"
CACHE = ROOT / ".cache" / "gkd_step_vs_trl"
LAYERS = 15  # configs/prune_and_distill.py's student: experiments/prune_and_distill.py BUDGETS
NUM_CALIBRATION = 64


def _is_model(folder: Path) -> bool:
  return (Path(folder) / "config.json").is_file()


def _instructions() -> str:
  from gkd_jax import tasks  # pylint: disable=import-outside-toplevel

  return os.path.join(tasks.asset_dir("instructions"), "train.jsonl")


def folders(teacher=None, student=None) -> tuple[Path, Path]:
  """(teacher, student) HF folders: the ones given, else workdirs/demo's, else .cache's (made here
  from the GGUF when missing). Exits with one line saying how to get them when that cannot be."""
  if (teacher is None) != (student is None):
    sys.exit("gkd_step_vs_trl --real: give both --teacher and --student, or neither")
  if teacher is not None:
    for name, folder in (("--teacher", teacher), ("--student", student)):
      if not _is_model(folder):
        sys.exit(f"gkd_step_vs_trl --real: {name}={folder} has no config.json (not an HF folder)")
    return Path(teacher), Path(student)
  if _is_model(DEMO / "teacher") and _is_model(DEMO / "pruned"):
    return DEMO / "teacher", DEMO / "pruned"
  teacher, student = CACHE / "teacher", CACHE / "pruned"
  from gkd_jax import released  # pylint: disable=import-outside-toplevel

  try:
    gguf = released.path(released.SMOLLM2_135M)
  except FileNotFoundError as e:
    if not (_is_model(teacher) and _is_model(student)):
      sys.exit(f"gkd_step_vs_trl --real: {e}, or run `make demo`, or pass --teacher/--student")
  if not _is_model(teacher):
    from gkd_jax.convert import gguf_to_hf  # pylint: disable=import-outside-toplevel

    print(f"writing the teacher: {gguf} -> {teacher}", file=sys.stderr, flush=True)
    gguf_to_hf(gguf, teacher)
  if not _is_model(student):
    from gkd_jax.prune_checkpoint import prune_checkpoint  # pylint: disable=import-outside-toplevel

    print(f"writing the student: {teacher} pruned to {LAYERS} layers", file=sys.stderr, flush=True)
    prune_checkpoint(teacher, student, LAYERS, "importance", _instructions(), NUM_CALIBRATION)
  return teacher, student


def batch_arrays(tokenizer_dir, batch: int, prompt_len: int, new_tokens: int) -> dict:
  """prompt / prompt_mask [B,P] (the trainer's chat-templated, left-padded prompts) and completion
  [B,N] (real text), int64 numpy, as gkd_step_vs_trl.batch_arrays."""
  from gkd_jax import data, tokenizers  # pylint: disable=import-outside-toplevel

  tok = tokenizers.load_tokenizer(str(tokenizer_dir))
  with open(_instructions()) as f:
    records = [json.loads(line) for line in f if line.strip()]
  pad = data.TokenizeAndPad(tok, prompt_len, new_tokens)
  rows = [pad.map(r) for r in records[:batch]]
  text = " ".join(r["messages"][0]["content"] for r in records[batch : batch + 50 * new_tokens])
  completion = tok.encode(text, add_bos=False)[: batch * new_tokens]
  if len(completion) < batch * new_tokens:
    raise ValueError(f"{len(completion)} tokens of text for a {batch} x {new_tokens} completion")
  return dict(
      prompt=np.stack([r["prompt_tokens"] for r in rows]).astype(np.int64),
      prompt_mask=np.stack([r["prompt_mask"] for r in rows]).astype(np.int64),
      completion=np.asarray(completion, np.int64).reshape(batch, new_tokens),
  )


def describe(teacher: Path, student: Path, prompt_mask_BxP) -> str:
  """One sentence: the two models (from their config.json / pruning.json) and the prompts."""

  def model(folder: Path) -> str:
    c = json.loads((folder / "config.json").read_text())
    return (
        f"{c['model_type']} {c['num_hidden_layers']} layers x {c['hidden_size']} "
        f"(MLP {c['intermediate_size']}, {c['num_attention_heads']} heads / "
        f"{c['num_key_value_heads']} KV), V={c['vocab_size']}"
    )

  pruning = student / "pruning.json"
  kept = ""
  if pruning.is_file():
    kept = f", layers {json.loads(pruning.read_text())['kept']} of the teacher kept"
  lengths = prompt_mask_BxP.sum(1)
  return (
      f"Teacher `{teacher.name}` ({model(teacher)}), student `{student.name}` ({model(student)}"
      f"{kept}), float32 HF folders loaded by both sides. Prompts: the first "
      f"{len(lengths)} chat-templated training prompts of the bundled instruction set, "
      f"{lengths.min()}–{lengths.max()} tokens left-padded to {prompt_mask_BxP.shape[1]} "
      "(as the trainer batches them)"
  )
