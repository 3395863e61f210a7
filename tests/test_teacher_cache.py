"""The offline teacher cache: round trip against a direct top-k of the teacher's full logits, resume
after an interruption, and every kind of mismatch refused."""

import json
import os
import pickle
import shutil
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest

from configs import arithmetic
from gkd_jax import data, tasks, teacher_cache, testing
from gkd_jax.models.hf import load_pretrained
from gkd_jax.scoring import score
from gkd_jax.tokenizers import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = tasks.asset_dir("arithmetic")
K, TAU, C, P = 4, 0.7, 12, 16


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("cache")
  with open(os.path.join(ASSETS, "train.jsonl")) as f:
    lines = [next(f) for _ in range(10)]
  prompt_only = json.dumps({"prompt": json.loads(lines[0])["prompt"]}) + "\n"
  train = d / "train.jsonl"
  train.write_text("".join(lines[:4]) + "\n" + prompt_only + "".join(lines[4:]))  # a blank line too
  return dict(
      dir=d,
      train=str(train),
      teacher=testing.save_tiny_llama(d / "teacher", seed=2),
      other_teacher=testing.save_tiny_llama(d / "other_teacher", seed=3),
  )


def _config(files, **changes):
  c = arithmetic.get_config()
  c.teacher.path, c.data.train_path = files["teacher"], files["train"]
  c.data.max_prompt_len, c.data.max_completion_len = P, C
  c.gkd.temperature = TAU
  c.gkd.teacher_cache_k = K
  for dotted, value in changes.items():
    section, field = dotted.split("__")
    c[section][field] = value
  return c


def _direct_topk(files):
  """Per record (batch of one), the top-k of log_softmax(full logits / T) at its completion tokens."""
  config = _config(files)
  tokenizer = load_tokenizer(config.tokenizer.path)
  model, params = load_pretrained(files["teacher"])
  tokenize = data.TokenizeAndPad(tokenizer, P, C)
  out = []
  for record in data.read_jsonl_records(files["train"]):
    row = tokenize.map(record)
    tokens = np.concatenate([row["prompt_tokens"], row["completion_tokens"]])[None]
    mask = np.concatenate([row["prompt_mask"], row["completion_mask"]])[None]
    logits_CxV = score(model, params, tokens, mask)[0, P - 1 : -1]
    logp, ids = jax.lax.top_k(jax.nn.log_softmax(logits_CxV / TAU, axis=-1), K)
    n = int(row["completion_mask"].sum())
    out.append((np.asarray(ids)[:n], np.asarray(logp)[:n], row["completion_tokens"][:n]))
  return out


@pytest.fixture(scope="module")
def written(files):
  out = os.path.join(files["dir"], "full")
  result = teacher_cache.write_cache(_config(files), out, records_per_shard=4, batch_size=3)
  assert result == {"written": [0, 1, 2], "kept": [], "num_shards": 3}
  return out


def test_round_trip_equals_a_direct_top_k(files, written):
  cache = teacher_cache.TeacherCache(written)
  expected = _direct_topk(files)
  assert len(cache) == len(expected) == 11
  for i, (ids, lp, toks) in enumerate(expected):
    entry = cache[i]
    n = len(ids)
    assert entry["teacher_topk_ids"].shape == (C, K) and entry["teacher_topk_ids"].dtype == np.int32
    assert entry["teacher_topk_logprobs"].dtype == np.float32
    np.testing.assert_array_equal(entry["teacher_topk_ids"][:n], ids, err_msg=f"record {i}")
    np.testing.assert_allclose(entry["teacher_topk_logprobs"][:n], lp, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(entry["cached_completion_tokens"][:n], toks)
    # past the completion: a valid all-tail teacher distribution
    np.testing.assert_array_equal(entry["teacher_topk_ids"][n:], np.tile(np.arange(K), (C - n, 1)))
    assert np.all(entry["teacher_topk_logprobs"][n:] == -np.inf)
  assert len(expected[4][0]) == 0  # the prompt-only record (after the blank line) has no tokens
  assert all(np.exp(lp).sum(-1).max() <= 1 + 1e-5 for _, lp, _ in expected if len(lp))
  # Grain reads it (in a worker too: it pickles), and rows stack like a batch.
  ds = grain.MapDataset.source(pickle.loads(pickle.dumps(cache)))
  np.testing.assert_array_equal(ds[7]["teacher_topk_ids"], cache[7]["teacher_topk_ids"])
  rows = teacher_cache.stack_rows(cache, np.array([5, 0, 10]))
  assert rows["teacher_topk_ids"].shape == (3, C, K)
  assert rows["cached_completion_tokens"].shape == (3, C)


def test_resume_after_interruption(files, written):
  out = os.path.join(files["dir"], "resumed")
  config = _config(files)
  first = teacher_cache.write_cache(config, out, records_per_shard=4, batch_size=3, max_shards=1)
  assert first["written"] == [0]
  with pytest.raises(ValueError, match="incomplete: 2 of 3 shards missing"):
    teacher_cache.TeacherCache(out)
  stamp = os.path.getmtime(os.path.join(out, "shard-00000", "ids.npy"))
  os.makedirs(os.path.join(out, "shard-00001.tmp"))  # a shard killed half-way
  open(os.path.join(out, "shard-00001.tmp", "ids.npy"), "w").write("partial")
  second = teacher_cache.write_cache(config, out, records_per_shard=4, batch_size=3)
  assert second == {"written": [1, 2], "kept": [0], "num_shards": 3}
  assert os.path.getmtime(os.path.join(out, "shard-00000", "ids.npy")) == stamp
  assert not os.path.exists(os.path.join(out, "shard-00001.tmp"))
  a, b = teacher_cache.TeacherCache(out), teacher_cache.TeacherCache(written)
  for i in range(len(b)):
    for key in ("teacher_topk_ids", "teacher_topk_logprobs", "cached_completion_tokens"):
      np.testing.assert_array_equal(a[i][key], b[i][key])
  assert teacher_cache.write_cache(config, out, records_per_shard=4)["written"] == []  # done


def _other_tokenizer(files):
  """Another sentencepiece tokenizer (other pieces for the same ids)."""
  d = os.path.join(files["dir"], "other_tok")
  if not os.path.exists(d):
    testing.build_sentencepiece(d)
  return os.path.join(d, "tokenizer.model")


def test_every_mismatch_is_refused_with_one_line(files, written):
  meta = teacher_cache.TeacherCache(written).metadata
  teacher_cache.check_compatible(meta, _config(files))  # its own run: accepted
  edited = os.path.join(files["dir"], "edited.jsonl")
  shutil.copy(files["train"], edited)
  with open(edited, "a") as f:
    f.write(json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n")
  cases = [
      (
          dict(data__train_path=edited),
          r"data \(data.train_path and its tokenization\) differs "
          r"\(sha256: cache [0-9a-f]{12}, run [0-9a-f]{12}\)",
      ),
      (dict(data__max_completion_len=C + 1), "max_completion_len: cache 12, run 13"),
      (dict(tokenizer__path=_other_tokenizer(files)), "tokenizer differs"),
      (dict(teacher__path=files["other_teacher"]), r"teacher \(teacher.path\) differs"),
      (dict(gkd__teacher_cache_k=K + 1), r"k \(gkd.teacher_cache_k\) differs \(cache 4, run 5\)"),
      (
          dict(gkd__temperature=1.0),
          r"temperature \(gkd.temperature\) differs \(cache 0.7, run 1.0\)",
      ),
  ]
  for changes, needle in cases:
    with pytest.raises(ValueError, match=needle) as e:
      teacher_cache.check_compatible(meta, _config(files, **changes))
    assert "\n" not in str(e.value)
  # A rerun into the same directory with another k is refused before anything is written.
  before = sorted(os.listdir(written))
  with pytest.raises(ValueError, match=r"existing cache .* k \(gkd.teacher_cache_k\) differs"):
    teacher_cache.write_cache(_config(files, gkd__teacher_cache_k=2), written, records_per_shard=4)
  assert sorted(os.listdir(written)) == before


def test_bad_cache_directories(files, tmp_path):
  with pytest.raises(ValueError, match="is not a teacher cache"):
    teacher_cache.TeacherCache(str(tmp_path))
  (tmp_path / "metadata.json").write_text(json.dumps({"format_version": 99}))
  with pytest.raises(ValueError, match="format_version=99"):
    teacher_cache.TeacherCache(str(tmp_path))
  with pytest.raises(ValueError, match="teacher.path='' "):
    teacher_cache.write_cache(_config(files, teacher__path=""), str(tmp_path / "x"))


def test_cli_cache_teacher(files, written, tmp_path):
  """`gkd-jax cache-teacher` writes the same cache (one shard here); no --out is a usage error."""
  config = tmp_path / "config.py"
  config.write_text(f"""
from configs import arithmetic
def get_config():
  c = arithmetic.get_config()
  c.teacher.path, c.data.train_path = {files["teacher"]!r}, {files["train"]!r}
  c.data.max_prompt_len, c.data.max_completion_len = {P}, {C}
  c.gkd.temperature, c.gkd.teacher_cache_k = {TAU}, {K}
  c.eval.batch_size = 4
  c.sampling.max_new_tokens = c.eval.max_new_tokens = {C}
  return c
""")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  cmd = [sys.executable, "-m", "gkd_jax.main", "cache-teacher", f"--config={config}"]
  bad = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
  assert bad.returncode == 2 and "cache-teacher needs --out" in bad.stderr
  out = tmp_path / "cache"
  ok = subprocess.run(cmd + [f"--out={out}"], env=env, capture_output=True, text=True, cwd=ROOT)
  assert ok.returncode == 0, ok.stderr
  assert json.loads(ok.stdout.strip().splitlines()[-1])["written"] == [0]
  a, b = teacher_cache.TeacherCache(str(out)), teacher_cache.TeacherCache(written)
  assert a.metadata["data"] == b.metadata["data"] and a.metadata["teacher"] == b.metadata["teacher"]
  for i in range(len(b)):
    np.testing.assert_array_equal(a[i]["teacher_topk_ids"], b[i]["teacher_topk_ids"])
    np.testing.assert_allclose(
        a[i]["teacher_topk_logprobs"], b[i]["teacher_topk_logprobs"], rtol=1e-6
    )
