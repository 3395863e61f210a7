"""Greedy decode throughput: gkd_jax.sample vs transformers' generate, same weights, one run.

A ~100M-parameter Llama-style model (random weights) is written once as a HuggingFace checkpoint
with `gkd_jax.save_pretrained`; this script times `gkd_jax.sample` (temperature 0) on it, then runs
itself under the torch venv to time `model.generate(do_sample=False)` on the same folder, and
reports tokens/s of both, their ratio, and how many generated tokens agree (a check that both
decode the same model). Compilation / warm-up is excluded; the timed runs alternate between the two
(the transformers process stays up and is driven over a pipe) so both see the same machine load,
and each side reports the median of `--repeats` runs. Both use all CPU cores of the machine.

    .venv/bin/python benchmarks/decode_vs_transformers.py            # batch 8, 128 new tokens
    .venv/bin/python benchmarks/decode_vs_transformers.py --repeats 5 --prompt-len 64

Not a test: timings are noisy on shared machines; compare the ratio, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _prompts(args):
  rng = np.random.default_rng(0)
  return rng.integers(3, 32000, (args.batch, args.prompt_len)).astype(np.int32)


def serve_transformers(args) -> None:
  """Runs under the torch venv: load the folder, warm up, then time one greedy `generate` per
  'run' line on stdin (a JSON line back each time); 'quit' ends it."""
  import torch
  from transformers import AutoModelForCausalLM

  torch.manual_seed(0)
  model = AutoModelForCausalLM.from_pretrained(args.ckpt, dtype=torch.float32).eval()
  ids = torch.tensor(_prompts(args), dtype=torch.long)
  kw = dict(
      attention_mask=torch.ones_like(ids),
      max_new_tokens=args.new_tokens,
      min_new_tokens=args.new_tokens,
      do_sample=False,
      pad_token_id=0,
  )
  with torch.inference_mode():
    out = model.generate(ids, **kw)  # warm-up
    print(
        json.dumps(
            dict(
                ready=True,
                threads=torch.get_num_threads(),
                torch=torch.__version__,
                tokens=out[:, ids.shape[1] :].tolist(),
            )
        ),
        flush=True,
    )
    for line in sys.stdin:
      if line.strip() != "run":
        break
      t = time.perf_counter()
      model.generate(ids, **kw)
      print(json.dumps(dict(seconds=time.perf_counter() - t)), flush=True)


def _reply(proc) -> dict:
  for line in proc.stdout:
    if line.startswith("{"):
      return json.loads(line)
  raise RuntimeError("transformers process ended early")


def gkd_jax_runner(args, model, params):
  """A function running one greedy `gkd_jax.sample` (compiled on first call) to completion."""
  import jax
  import jax.numpy as jnp
  import gkd_jax

  prompts = jnp.asarray(_prompts(args))
  mask = jnp.ones_like(prompts)
  rng = jax.random.key(0)

  def go():
    out = gkd_jax.sample(
        model,
        params,
        prompts,
        mask,
        rng,
        max_new_tokens=args.new_tokens,
        temperature=0.0,
        eos_id=None,
    )
    return jax.block_until_ready(out)

  return go


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--prompt-len", type=int, default=32)
  ap.add_argument("--new-tokens", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument(
      "--ref-python",
      default=str(ROOT / ".refvenv/bin/python"),
      help="python of a venv with torch + transformers",
  )
  ap.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)  # set for the child run
  ap.add_argument("--transformers-child", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.transformers_child:
    serve_transformers(args)
    return

  import jax
  import gkd_jax
  from gkd_jax.models import build, init, num_params
  from gkd_jax.testing import llama_100m_config

  model = build(llama_100m_config())
  params = init(model, jax.random.key(0))
  n_params = num_params(model)
  with tempfile.TemporaryDirectory() as tmp:
    gkd_jax.save_pretrained(tmp, model, params)
    cmd = [
        args.ref_python,
        __file__,
        "--transformers-child",
        "--ckpt",
        tmp,
        "--batch",
        str(args.batch),
        "--prompt-len",
        str(args.prompt_len),
        "--new-tokens",
        str(args.new_tokens),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")  # no network at run time
    with open(Path(tmp) / "child.log", "w") as log:
      proc = subprocess.Popen(
          cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env
      )
      go = gkd_jax_runner(args, model, params)
      t = time.perf_counter()
      out = go()  # compile + warm-up (the child loads and warms up meanwhile)
      compile_s = time.perf_counter() - t
      try:
        ready = _reply(proc)
        # Interleave the timed runs so both sides see the same machine load.
        mine, ref = [], []
        for _ in range(args.repeats):
          t = time.perf_counter()
          out = go()
          mine.append(time.perf_counter() - t)
          proc.stdin.write("run\n")
          proc.stdin.flush()
          ref.append(_reply(proc)["seconds"])
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
      except Exception:
        proc.kill()
        log.flush()
        sys.exit("transformers run failed:\n" + (Path(tmp) / "child.log").read_text()[-4000:])

  n_tokens = args.batch * args.new_tokens
  a, b = np.asarray(out.tokens), np.array(ready["tokens"])
  mine_s, ref_s = statistics.median(mine), statistics.median(ref)
  report = dict(
      params_millions=round(n_params / 1e6, 1),
      batch=args.batch,
      prompt_len=args.prompt_len,
      new_tokens=args.new_tokens,
      repeats=args.repeats,
      gkd_jax_tokens_per_s=round(n_tokens / mine_s, 1),
      transformers_tokens_per_s=round(n_tokens / ref_s, 1),
      speedup=round(ref_s / mine_s, 2),
      speedup_per_pair=[round(r / m, 2) for m, r in zip(mine, ref)],
      # Greedy paths agree until a near-tie flips an argmax (random weights have many).
      agreeing_prefix_mean=float(np.mean([np.argmax(np.r_[x != y, True]) for x, y in zip(a, b)])),
      gkd_jax=dict(
          seconds=mine,
          compile_seconds=round(compile_s, 1),
          jax=jax.__version__,
          devices=str(jax.devices()),
      ),
      transformers=dict(seconds=ref, threads=ready["threads"], torch=ready["torch"]),
  )
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
