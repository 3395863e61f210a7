"""Every bundled config loads and passes validation (placeholder paths aside)."""

import glob
import os
import runpy

import pytest

from gkd_jax.config_validation import validate

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), os.pardir, "configs", "*.py")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_validates(path):
  config = runpy.run_path(path)["get_config"]()
  bundled = os.path.basename(path) == "demo.py"  # the only one whose paths ship with the repo
  if os.path.basename(path) == "default.py":  # paths are empty by design: fill them in
    with pytest.raises(ValueError, match="path"):
      validate(config, num_devices=8)
    return
  validate(config, num_devices=8 if bundled else 32, check_paths=bundled)
