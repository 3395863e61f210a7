"""Every bundled config loads and passes validation (placeholder paths aside)."""

import glob
import os
import runpy
import subprocess
import sys

import pytest

from gkd_jax.config_validation import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    p for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) if not p.endswith("__init__.py")
)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_validates(path):
  config = runpy.run_path(path)["get_config"]()
  bundled = os.path.basename(path) in ("demo.py", "paper_table.py", "arithmetic.py")  # shipped
  if os.path.basename(path) == "default.py":  # paths are empty by design: fill them in
    with pytest.raises(ValueError, match="path"):
      validate(config, num_devices=8)
    return
  # CPU-sized configs get 8 devices; prune_and_distill's paths are filled in by its experiment.
  cpu = bundled or os.path.basename(path) == "prune_and_distill.py"
  validate(config, num_devices=8 if cpu else 32, check_paths=bundled)


def test_configs_load_through_the_config_flag_from_any_directory(tmp_path):
  """`--config=FILE` (ml_collections' loader) in a process whose working directory and sys.path
  hold no repo: configs reach each other as the installed `configs` package, not by path."""
  script = f"""
import sys
from absl import flags
from ml_collections import config_flags
assert {ROOT!r} not in sys.path, sys.path
flag = config_flags.DEFINE_config_file("config")
for path in {CONFIGS!r}:
  flags.FLAGS(["prog", "--config=" + path])
  assert flag.value.gkd.loss, path
  flags.FLAGS.unparse_flags()
print("loaded", len({CONFIGS!r}))
"""
  out = subprocess.run(
      [sys.executable, "-c", script],
      cwd=tmp_path,
      capture_output=True,
      text=True,
      timeout=120,
      env=dict(os.environ, PYTHONPATH=""),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["loaded", str(len(CONFIGS))]
