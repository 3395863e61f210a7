"""Behaviour unchanged across a refactor: short runs of every teacher mode, metrics rows compared.

Trains 6 steps of each mode (on-policy, supervised KD, λ=0.5 by batch and by example, SFT, SeqKD,
CE + divergence, the teacher cache alone and beside a live teacher) on the bundled toy task and
writes every metrics row (timings dropped) to OUT.json. Run it in two checkouts and compare:

  git worktree add /tmp/before <commit>
  (cd /tmp/before && PYTHONPATH=/tmp/before python experiments/same_runs.py /tmp/before.json)
  python experiments/same_runs.py /tmp/after.json
  python experiments/same_runs.py --compare /tmp/before.json /tmp/after.json
"""

import json
import os
import shutil
import sys
import tempfile

from configs import demo
from gkd_jax import teacher_cache, train

TIME_KEYS = ("time", "seconds", "per_s", "elapsed", "step_s", "eta")


def _kept(key: str) -> bool:
  return not any(t in key for t in TIME_KEYS)


def config(**gkd):
  c = demo.get_config()
  c.train.num_steps = 6
  c.train.log_every = 1
  c.train.eval_every = 3
  c.train.checkpoint_every = 6
  c.train.export_final = False
  c.eval.num_examples = 16
  c.eval.num_samples = 1
  c.gkd.teacher_cache_k = 8
  for k, v in gkd.items():
    group, field = k.split("__")
    c[group][field] = v
  return c


MODES = {
    "on_policy": {},
    "supervised_kd": {"gkd__lmbda": 0.0},
    "mixed_batch": {"gkd__lmbda": 0.5},
    "mixed_example": {"gkd__lmbda": 0.5, "gkd__mixing": "example"},
    "sft": {"gkd__lmbda": 0.0, "gkd__divergence_weight": 0.0, "gkd__ce_weight": 1.0},
    "seq_kd": {"gkd__lmbda": 0.0, "gkd__seq_kd": True},
    "ce_and_div": {"gkd__lmbda": 0.5, "gkd__ce_weight": 0.5},
}


def rows(workdir):
  out = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      out.append({k: v for k, v in r.items() if _kept(k)})
  return out


def main(out_path):
  tmp = tempfile.mkdtemp()
  results = {}
  for name, over in MODES.items():
    wd = os.path.join(tmp, name)
    train.train(config(**over), wd)
    results[name] = rows(wd)
    print(name, "done", flush=True)
    _write(out_path, results)  # after each mode: a crash keeps what ran
  cache_dir = os.path.join(tmp, "cache")
  teacher_cache.write_cache(config(gkd__lmbda=0.0), cache_dir)
  for name, lmbda in (("cached_kd", 0.0), ("cached_mixed", 0.5)):
    wd = os.path.join(tmp, name)
    train.train(config(gkd__lmbda=lmbda, gkd__teacher_cache=cache_dir), wd)
    results[name] = rows(wd)
    print(name, "done", flush=True)
  _write(out_path, results)
  shutil.rmtree(tmp)


def _write(path, results):
  with open(path, "w") as f:
    json.dump(results, f, indent=1, sort_keys=True)


def compare(before_path, after_path) -> int:
  """Prints each mode's differing values; exit code 1 if any."""
  with open(before_path) as f, open(after_path) as g:
    before, after = json.load(f), json.load(g)
  bad = 0
  for mode in sorted(set(before) | set(after)):
    a, b = before.get(mode, []), after.get(mode, [])
    diffs = [
        (x.get("step"), k)
        for x, y in zip(a, b)
        for k in set(x) | set(y)
        if _kept(k) and x.get(k) != y.get(k)
    ]
    diffs += [("rows", len(a), len(b))] if len(a) != len(b) else []
    values = sum(len([k for k in x if _kept(k)]) for x in a)
    print(f"{mode}: {len(a)} rows, {values} values, " + ("identical" if not diffs else f"{diffs}"))
    bad += bool(diffs)
  return int(bad > 0)


if __name__ == "__main__":
  if sys.argv[1] == "--compare":
    sys.exit(compare(sys.argv[2], sys.argv[3]))
  main(sys.argv[1])
