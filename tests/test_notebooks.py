"""Every notebook executes from top to bottom on a reduced budget (and so passes its own checks)."""

import glob
import os

import nbformat
from nbclient import NotebookClient
import pytest

NOTEBOOKS = os.path.normpath(os.path.join(os.path.dirname(__file__), os.pardir, "notebooks"))
PATHS = sorted(glob.glob(os.path.join(NOTEBOOKS, "*.ipynb")))


def test_notebooks_exist():
  assert len(PATHS) >= 3, PATHS


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=os.path.basename)
def test_notebook_executes(path, tmp_path, monkeypatch):
  monkeypatch.setenv("NOTEBOOK_OUT", str(tmp_path))  # figures go here, not into the repo
  monkeypatch.setenv("NOTEBOOK_BUDGET", "small")  # live cells train/evaluate less
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  with open(path) as f:
    nb = nbformat.read(f, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count for c in code), "committed notebooks carry their outputs"
  assert any(o.output_type == "display_data" for c in code for o in c.outputs), "and figures"
  NotebookClient(
      nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}
  ).execute()  # raises on any error
  assert list(tmp_path.glob("*.png")), "a notebook saves its figures"
