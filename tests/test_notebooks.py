"""The notebooks (jupytext percent scripts) execute, and show what they claim."""

import os
import runpy

NOTEBOOKS = os.path.join(os.path.dirname(__file__), os.pardir, "notebooks")


def test_jsd_beta_ablation(tmp_path, monkeypatch):
  monkeypatch.setenv("NOTEBOOK_OUT", str(tmp_path))
  monkeypatch.setenv("NOTEBOOK_STEPS", "300")
  ns = runpy.run_path(os.path.join(NOTEBOOKS, "jsd_beta_ablation.py"))
  assert (tmp_path / "jsd_beta_ablation.png").stat().st_size > 0
  sigma, fits = ns["sigma"], ns["fits"]
  # forward KL covers both modes (wide), reverse KL seeks the heavier one (narrow, near token 16)
  assert sigma[0.0] > 2 * sigma[1.0]
  assert 20 < float(fits[0.0][0]) < 40 and abs(float(fits[1.0][0]) - 16) < 2
  assert sigma[0.5] > 2 * sigma[1.0]  # interior β still covers both modes here
