"""`gkd-jax prune`: a checkpoint pruned by depth, written as a normal checkpoint (see prune.py).

  prune_checkpoint("teacher.gguf", "out/pruned", num_layers=15,
                   calibration="gkd_jax/tasks/assets/instructions/train.jsonl")

Block importance is measured on the first `num_calibration` prompts of a JSONL file (chat records go
through the tokenizer's own chat template, as in training); the output folder holds config.json,
safetensors, the tokenizer (with its chat template) and `pruning.json` (the kept layers, every
layer's importance and the rule), so the student it holds loads like any other checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from gkd_jax import data, prune, tokenizers
from gkd_jax.models import hf


def calibration_batch(tokenizer, path: str, num: int, max_len: int = 128):
  """(tokens_BxT, mask_BxT) of the first `num` records' prompts (and completions, when given)."""
  records = data.read_jsonl_records(path)[:num]
  rows = []
  for r in records:
    ids, completion = data.record_ids(tokenizer, r, None)
    if r.get("completion_ids"):
      ids = ids + list(r["completion_ids"])
    elif completion:
      ids = ids + tokenizer.encode(completion, add_bos=False)
    rows.append(ids[:max_len])
  T = max(len(r) for r in rows)
  tokens = np.full((len(rows), T), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(rows), T), np.int32)
  for i, r in enumerate(rows):
    tokens[i, : len(r)] = r
    mask[i, : len(r)] = 1
  return tokens, mask


def prune_checkpoint(
    source,
    out,
    num_layers: int,
    rule: str = "importance",
    calibration: str = "",
    num_calibration: int = 64,
) -> dict:
  """Writes `source` (HF folder or .gguf) pruned to `num_layers` layers into `out`; returns the
  pruning record (also written as out/pruning.json)."""
  if rule == "importance" and not calibration:
    raise ValueError("prune rule 'importance' needs calibration prompts (--calibration=FILE.jsonl)")
  if calibration and not os.path.isfile(calibration):
    raise ValueError(f"--calibration={calibration!r} is not a file")
  tok = tokenizers.load_tokenizer(str(source))
  model, params = hf.load_pretrained(source, dtype=jnp.float32)
  batch = calibration_batch(tok, calibration, num_calibration) if calibration else None
  pruned, pruned_params, info = prune.prune(model, params, num_layers, rule, calibration=batch)
  hf.save_pretrained(out, pruned, pruned_params)
  tokenizers.save_tokenizer(tok, str(out))
  record = {
      "source": str(source),
      "rule": info["rule"],
      "kept": [int(i) for i in info["kept"]],
      "importance": None if info["importance"] is None else [float(x) for x in info["importance"]],
      "calibration": calibration,
      "num_calibration": 0 if batch is None else int(batch[0].shape[0]),
  }
  with open(Path(out) / "pruning.json", "w") as f:
    json.dump(record, f, indent=1)
  return record
