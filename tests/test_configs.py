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
  bundled = os.path.basename(path) in ("demo.py", "paper_table.py", "arithmetic.py")  # shipped
  if os.path.basename(path) == "default.py":  # paths are empty by design: fill them in
    with pytest.raises(ValueError, match="path"):
      validate(config, num_devices=8)
    return
  validate(config, num_devices=8 if bundled else 32, check_paths=bundled)


def test_validation_choices_match_the_implementations():
  """config_validation stays import-light (no jax), so it lists choices itself; keep them in sync."""
  from gkd_jax import config_validation, divergences, kernels, train  # pylint: disable=g-import-not-at-top
  assert set(config_validation.LOSSES) == set(divergences.KINDS)
  assert set(config_validation.DTYPES) == set(train.DTYPES)
  check = dict(config_validation.FIELDS)["gkd.kernel_impl"]
  assert all(check(impl) is None for impl in kernels.IMPLS) and check("triton") is not None
