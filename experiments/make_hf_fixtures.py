"""Reference fixtures from transformers for the HF parity tests (tests/test_hf_parity.py).

Run with the torch venv (the tests themselves never import torch):

  .refvenv/bin/python experiments/make_hf_fixtures.py

For each family (gemma2, gemma3_text, llama with llama3 RoPE scaling, qwen2 with qkv biases, qwen3
with q/k norm) it builds a tiny random model in transformers (GQA, sliding windows shorter than the
sequence, soft-caps on where the family has them), perturbs every weight (norm scales and biases
included, so no parameter sits at its trivial init), and writes to tests/fixtures/hf/<family>/:

  config.json, generation_config.json, model.safetensors   transformers' own save_pretrained
  config.v4.json     the same architecture in the transformers 4.x dialect (rope_theta,
                     rope_scaling, rope_local_base_freq, sliding_window_pattern, no layer_types),
                     checked here to parse to the same transformers config
  expected.npz       tokens/mask [B,T] (a full row, a left-padded row, a right-padded row),
                     logits [B,T,V] float32 (positions = cumsum(mask)-1), final-norm hidden
                     states [B,T,D] (what score(..., return_hidden=True) returns), and a greedy
                     continuation: prompt_tokens/prompt_mask [B,P] (left-padded),
                     greedy_tokens [B,N] from `generate`, greedy_margin (smallest top-1 minus
                     top-2 logit along the path, so a tie can't make the test flaky)

With --check DIR it instead loads every DIR/<family> (written by gkd_jax.save_pretrained, see
tests/test_hf_io.py or experiments/check_saved_in_transformers.sh) in transformers and compares its
logits with the fixture's expected logits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hf")
T, PROMPT, NEW = 24, 12, 20
COMMON = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)

# family -> (config class, 5.x kwargs, 4.x-dialect config.json fields that replace the 5.x ones)
FAMILIES = {
    "gemma2": (transformers.Gemma2Config,
               dict(COMMON, num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=24,
                    sliding_window=8, attn_logit_softcapping=6.0, final_logit_softcapping=4.0,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
               dict(rope_theta=10000.0)),
    "gemma3_text": (transformers.Gemma3TextConfig,
                    dict(COMMON, num_hidden_layers=4, num_key_value_heads=1, head_dim=16,
                         query_pre_attn_scalar=16, sliding_window=8,
                         attn_logit_softcapping=8.0, final_logit_softcapping=5.0,
                         layer_types=["sliding_attention", "sliding_attention",
                                      "full_attention", "sliding_attention"],
                         rope_parameters={
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                             "full_attention": {"rope_type": "linear", "factor": 4.0,
                                                "rope_theta": 1000.0}}),
                    dict(rope_theta=1000.0, rope_local_base_freq=10.0, sliding_window_pattern=3,
                         rope_scaling={"rope_type": "linear", "factor": 4.0})),
    "llama": (transformers.LlamaConfig,
              dict(COMMON, num_hidden_layers=2, head_dim=8, tie_word_embeddings=False,
                   rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 16}),
              dict(rope_theta=500000.0,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 16})),
    "qwen2": (transformers.Qwen2Config,
              dict(COMMON, num_hidden_layers=2, tie_word_embeddings=True,
                   rope_parameters={"rope_type": "default", "rope_theta": 1000.0}),
              dict(rope_theta=1000.0, rope_scaling=None)),
    "qwen3": (transformers.Qwen3Config,
              dict(COMMON, num_hidden_layers=2, head_dim=16, tie_word_embeddings=False,
                   rope_parameters={"rope_type": "default", "rope_theta": 1000.0}),
              dict(rope_theta=1000.0, rope_scaling=None)),
}
V5_ONLY = ("rope_parameters", "layer_types")


def perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
  """Random values for every parameter: no weight is left at a trivial (0/1) init."""
  gemma = model.config.model_type.startswith("gemma")
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
      if "norm" in name:  # gemma stores w of x*(1+w); others scale x*w
        p.copy_(0.3 * noise + (0.0 if gemma else 1.0))
      elif "embed_tokens" in name:
        p.copy_(noise * (0.1 if gemma else 0.3))  # small: the layers, not the embedding, decide
      else:
        p.copy_(noise * (1.0 / p.shape[-1] ** 0.5) if p.ndim == 2 else 0.3 * noise)


def inputs(gen: torch.Generator, vocab: int):
  tokens = torch.randint(3, vocab, (3, T), generator=gen)
  mask = torch.ones(3, T, dtype=torch.long)
  mask[1, :5] = 0  # left padding
  mask[2, -4:] = 0  # right padding
  tokens = tokens * mask  # padding id 0
  prompt = torch.randint(3, vocab, (2, PROMPT), generator=gen)
  prompt_mask = torch.ones(2, PROMPT, dtype=torch.long)
  prompt_mask[1, :4] = 0
  prompt = prompt * prompt_mask
  return tokens, mask, prompt, prompt_mask


def logits_of(model, tokens, mask, hidden=False) -> np.ndarray:
  positions = (mask.cumsum(-1) - 1).clamp(min=0)
  with torch.no_grad():
    if hidden:  # the base model's output: final-norm hidden states
      out = model.model(input_ids=tokens, attention_mask=mask, position_ids=positions)
      return out.last_hidden_state.float().numpy()
    out = model(input_ids=tokens, attention_mask=mask, position_ids=positions)
  return out.logits.float().numpy()


def greedy(model, prompt, prompt_mask):
  gen_cfg = transformers.GenerationConfig(do_sample=False, max_new_tokens=NEW, min_new_tokens=0,
                                          eos_token_id=None, pad_token_id=0, bos_token_id=1)
  with torch.no_grad():
    out = model.generate(input_ids=prompt, attention_mask=prompt_mask, generation_config=gen_cfg,
                         output_logits=True, return_dict_in_generate=True)
  new = out.sequences[:, prompt.shape[1]:].numpy()
  top2 = torch.stack(out.logits, 1).float().topk(2, dim=-1).values  # [B,N,2]
  margin = float((top2[..., 0] - top2[..., 1]).min())
  return new, margin


def v4_dialect(config_json: dict, v4_fields: dict) -> dict:
  out = {k: v for k, v in config_json.items() if k not in V5_ONLY and not k.startswith("_")}
  out["torch_dtype"] = out.pop("dtype")
  out.update(v4_fields)
  out["transformers_version"] = "4.50.0"
  return out


def make(family: str, seed: int) -> None:
  cls, kwargs, v4_fields = FAMILIES[family]
  config = cls(**kwargs)
  config._attn_implementation = "eager"
  for attempt in range(100):  # re-draw until greedy has no near-ties and does not just repeat
    gen = torch.Generator().manual_seed(seed + 1000 * attempt)
    torch.manual_seed(seed + 1000 * attempt)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    perturb(model, gen)
    tokens, mask, prompt, prompt_mask = inputs(gen, config.vocab_size)
    new, margin = greedy(model, prompt, prompt_mask)
    if margin > 1e-3 and min(len(set(row.tolist())) for row in new) >= 5:
      break
  else:
    raise RuntimeError(f"{family}: every draw had a near-tie or a repetitive greedy path")
  logits = logits_of(model, tokens, mask)
  out = os.path.join(OUT, family)
  shutil.rmtree(out, ignore_errors=True)
  model.save_pretrained(out)
  with open(os.path.join(out, "config.json")) as f:
    saved = json.load(f)
  v4 = v4_dialect(saved, v4_fields)
  with open(os.path.join(out, "config.v4.json"), "w") as f:
    json.dump(v4, f, indent=2, sort_keys=True)
  # The 4.x file must mean the same model to transformers.
  a = cls.from_dict(saved)
  b = cls.from_dict(v4)
  for field in ("layer_types", "rope_parameters", "sliding_window", "head_dim"):
    if getattr(a, field, None) != getattr(b, field, None):
      raise RuntimeError(f"{family}: 4.x dialect differs in {field}: {getattr(a, field)} vs "
                         f"{getattr(b, field)}")
  valid = mask.numpy().astype(bool)
  if family.startswith("gemma"):  # the soft-caps must matter for these weights and inputs
    # (transformers' Gemma 3 ignores attn_logit_softcapping: kept in its config to test that.)
    caps = ("attn_logit_softcapping",) * (family == "gemma2") + ("final_logit_softcapping",)
    for cap in caps:
      uncapped = cls(**dict(kwargs, **{cap: None}))
      uncapped._attn_implementation = "eager"
      other = transformers.AutoModelForCausalLM.from_config(uncapped, dtype=torch.float32).eval()
      other.load_state_dict(model.state_dict())
      diff = np.abs(logits_of(other, tokens, mask) - logits)[valid].max()
      if diff < 1e-2:
        raise RuntimeError(f"{family}: {cap} barely changes the logits ({diff:.1e})")
  np.savez_compressed(os.path.join(out, "expected.npz"), tokens=tokens.numpy().astype(np.int32),
                      mask=mask.numpy().astype(np.int32), logits=logits.astype(np.float32),
                      hidden=logits_of(model, tokens, mask, hidden=True).astype(np.float32),
                      prompt_tokens=prompt.numpy().astype(np.int32),
                      prompt_mask=prompt_mask.numpy().astype(np.int32),
                      greedy_tokens=new.astype(np.int32), greedy_margin=np.float32(margin))
  size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
  print(f"{family}: seed attempt {attempt}, greedy margin {margin:.4f}, "
        f"|logit| max {np.abs(logits[valid]).max():.2f}, {size / 1024:.0f} KiB, "
        f"greedy[0] {new[0].tolist()}")


def check(root: str) -> int:
  """Load gkd_jax-saved folders in transformers; compare logits with the fixtures."""
  worst = 0.0
  for family in FAMILIES:
    folder = os.path.join(root, family)
    if not os.path.isdir(folder):
      print(f"{family}: {folder} missing")
      return 1
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager").eval()
    exp = np.load(os.path.join(OUT, family, "expected.npz"))
    tokens, mask = torch.tensor(exp["tokens"]).long(), torch.tensor(exp["mask"]).long()
    got = logits_of(model, tokens, mask)
    valid = exp["mask"].astype(bool)
    err = float(np.abs(got[valid] - exp["logits"][valid]).max())
    new, _ = greedy(model, torch.tensor(exp["prompt_tokens"]).long(),
                    torch.tensor(exp["prompt_mask"]).long())
    same = bool((new == exp["greedy_tokens"]).all())
    print(f"{family}: transformers {transformers.__version__} loads the gkd_jax-saved folder "
          f"({type(model).__name__}); max |dlogit| vs fixture {err:.2e}; greedy identical: {same}")
    worst = max(worst, err if same else float("inf"))
  return 0 if worst <= 1e-5 else 1


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--check", help="folder of gkd_jax-saved checkpoints, one per family")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  torch.set_num_threads(1)
  if args.check:
    return check(args.check)
  for i, family in enumerate(FAMILIES):
    make(family, args.seed + i)
  return 0


if __name__ == "__main__":
  sys.exit(main())
