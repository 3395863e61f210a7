"""Does a checkpoint written by gkd_jax.save_pretrained open in transformers unchanged?

  .venv/bin/python experiments/check_saved_in_transformers.py [OUT_DIR]

Loads every parity fixture (tests/fixtures/hf/<family>) with gkd_jax.load_pretrained, writes it
back with gkd_jax.save_pretrained (our config.json dialect, tensor names and layouts), once as a
single model.safetensors and once in shards with model.safetensors.index.json, then runs
`tests/fixtures/make_hf_fixtures.py --check OUT_DIR` in the torch venv (.refvenv): transformers'
AutoModelForCausalLM.from_pretrained loads each folder and must reproduce the fixture's logits
(max |dlogit| <= 1e-5) and greedy continuation. Exit status 0 when every family passes.
"""

import os
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FAMILIES = ("gemma2", "gemma3_text", "llama", "qwen2", "qwen3")


def main() -> int:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import gkd_jax
  from gkd_jax.models import hf

  out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="gkd_saved_")
  refpy = os.path.join(ROOT, ".refvenv", "bin", "python")
  status = 0
  for layout, shard_bytes in (("single", 5 * 2**30), ("sharded", 60_000)):
    for family in FAMILIES:
      model, params = gkd_jax.load_pretrained(os.path.join(ROOT, "tests", "fixtures", "hf", family))
      folder = os.path.join(out, layout, family)
      hf.save_pretrained(folder, model, params, max_shard_bytes=shard_bytes)
      files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
      print(f"{family}: saved by gkd_jax to {folder} ({len(files)} safetensors file(s))")
    maker = os.path.join(ROOT, "tests", "fixtures", "make_hf_fixtures.py")
    status |= subprocess.call([refpy, maker, "--check", os.path.join(out, layout)])
  return status


if __name__ == "__main__":
  sys.exit(main())
