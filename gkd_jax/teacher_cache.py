"""Offline teacher cache: the teacher's top-k tokens and log-probabilities at every dataset completion
token, written once, read back aligned with the training records.

  gkd-jax cache-teacher --config=CFG --out=DIR    # write_cache(config, DIR): resumable
  cache = TeacherCache(DIR)                        # a Grain RandomAccessDataSource
  check_compatible(cache.metadata, run_metadata(config))   # refuses a cache of another run
  cache[i]  # record i of data.train_path (file order, blank lines skipped, as data.read_jsonl_records):
            # {"teacher_topk_ids": int32 [C, k], "teacher_topk_logprobs": float32 [C, k],
            #  "cached_completion_tokens": int32 [C]}   C = data.max_completion_len

Position j of record i is the teacher's distribution over the token at completion position j (predicted
from the prompt and completion tokens before it), exactly the rows `data.TokenizeAndPad` lays out:
the log-probabilities are of the teacher's FULL distribution at `gkd.temperature`
(``log_softmax(logits / T)``, logits after the teacher's final soft-cap), so at each position their exp
sums to <= 1 and `gkd_jax.divergences.topk_divergence` forms the tail from them. Positions past the
completion (mask 0) hold ids 0..k-1 with log-probabilities -inf (a valid (k+1)-way teacher
distribution, all in the tail), so a masked-out loss stays finite there.

Layout of DIR: ``metadata.json`` (written first; a rerun into the same DIR must match it) and
``shard-NNNNN/`` directories of ``records_per_shard`` consecutive records, each holding
``ids.npy`` [T, k] int32, ``logprobs.npy`` [T, k] float32, ``tokens.npy`` [T] int32 (the completion
tokens, to check alignment) and ``offsets.npy`` [R + 1] int64 (record r's tokens are rows
offsets[r]:offsets[r + 1]), for T completion tokens of R records. A shard is written to a temporary
directory and renamed into place when complete, so an interrupted run keeps every finished shard and
continues with the next (`write_cache` on the same DIR). The .npy files are memory-mapped: a record
is two slices, no deserialisation (ArrayRecord would add a per-record encode/decode for what are
fixed-width numeric arrays).

Identity recorded in the metadata (`check_compatible` compares each part, and names the first that
differs): the data (sha256 of the file, and the prompt/completion lengths and chat family that decide
the token positions), the tokenizer (sha256 of its id -> token table and special ids), the teacher
(sha256 of config.json, and a sampled content fingerprint of the weight files: name, size, and sha256
of 1 MiB at 18 evenly spaced offsets per file -- a full hash of multi-GB weights would cost tens of
seconds at every start-up; fine-tuning changes every tensor, so a sample catches it), k, and the
temperature.

The writer runs on one process and the default device; it holds one batch of [B, T, V] teacher logits.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import shutil
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gkd_jax import data, divergences, models, run_config
from gkd_jax.scoring import score

FORMAT_VERSION = 1
METADATA = "metadata.json"
DEFAULT_RECORDS_PER_SHARD = 1024
_SAMPLE_BYTES = 1 << 20
_SAMPLES_PER_FILE = 18


# ---------------------------------------------------------------------------------------------------
# identity


def _sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def _weights_fingerprint(path: str) -> str:
  """Sampled content hash of a checkpoint's weight files (module docstring)."""
  files = sorted(
      glob.glob(os.path.join(path, "*.safetensors")) + glob.glob(os.path.join(path, "*.bin"))
  )
  if not files:
    raise ValueError(f"teacher.path={path!r} has no *.safetensors weight files")
  h = hashlib.sha256()
  for name in files:
    size = os.path.getsize(name)
    h.update(f"{os.path.basename(name)}:{size}".encode())
    with open(name, "rb") as f:
      for i in range(_SAMPLES_PER_FILE):
        f.seek(max(0, (size - _SAMPLE_BYTES) * i // (_SAMPLES_PER_FILE - 1)))
        h.update(f.read(_SAMPLE_BYTES))
  return h.hexdigest()


def teacher_identity(path: str) -> dict:
  config = os.path.join(path, "config.json")
  if not os.path.isfile(config):
    raise ValueError(f"teacher.path={path!r} is not a checkpoint directory (no config.json)")
  return {"config_sha256": _sha256_file(config), "weights_fingerprint": _weights_fingerprint(path)}


def tokenizer_identity(tokenizer) -> dict:
  h = hashlib.sha256()
  h.update(json.dumps([tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id]).encode())
  # The chat template and BOS default decide how records become ids, as much as the vocabulary.
  template = getattr(tokenizer, "chat_template", None) or ""
  h.update(json.dumps([template, getattr(tokenizer, "add_bos_default", True)]).encode())
  for i in range(tokenizer.vocab_size):
    h.update(tokenizer.id_to_token(i).encode("utf-8", "surrogatepass") + b"\0")
  return {"vocab_size": tokenizer.vocab_size, "sha256": h.hexdigest()}


def data_identity(config) -> dict:
  c = config.data
  return {
      "sha256": _sha256_file(c.train_path),
      "max_prompt_len": int(c.max_prompt_len),
      "max_completion_len": int(c.max_completion_len),
      "chat_family": c.chat_family or "",
  }


def cache_k(config) -> int:
  return int(config.gkd.teacher_cache_k)


def run_metadata(config, tokenizer=None) -> dict:
  """The identity a cache for this config must have (`check_compatible`); reads no weights fully."""
  config = run_config.from_config(config)
  if tokenizer is None:
    from gkd_jax.tokenizers import load_tokenizer  # pylint: disable=g-import-not-at-top

    tokenizer = load_tokenizer(config.tokenizer.path or config.student.path)
  return {
      "format_version": FORMAT_VERSION,
      "data": data_identity(config),
      "tokenizer": tokenizer_identity(tokenizer),
      "teacher": teacher_identity(config.teacher.path),
      "k": cache_k(config),
      "temperature": float(config.gkd.temperature),
  }


# Parts compared, in order, with the names an error gives them.
_PARTS = (
    ("format_version", "format version"),
    ("data", "data (data.train_path and its tokenization)"),
    ("tokenizer", "tokenizer"),
    ("teacher", "teacher (teacher.path)"),
    ("k", "k (gkd.teacher_cache_k)"),
    ("temperature", "temperature (gkd.temperature)"),
)


def _first_difference(a, b) -> str:
  if isinstance(a, dict) and isinstance(b, dict):
    for key in sorted(set(a) | set(b)):
      if a.get(key) != b.get(key):
        return f"{key}: cache {_short(a.get(key))}, run {_short(b.get(key))}"
  return f"cache {_short(a)}, run {_short(b)}"


def _short(v):
  return v[:12] if isinstance(v, str) and len(v) == 64 else v


def check_compatible(metadata: dict, run: Any, where: str = "teacher cache") -> None:
  """Raises ValueError, one line naming what differs (data, tokenizer, teacher, k, temperature),
  when the cache's metadata is not that of `run` (a `run_metadata` dict, or a config)."""
  expected = run if isinstance(run, dict) else run_metadata(run)
  for key, name in _PARTS:
    if metadata.get(key) != expected.get(key):
      raise ValueError(
          f"{where} does not match this run: {name} differs "
          f"({_first_difference(metadata.get(key), expected.get(key))})"
      )


# ---------------------------------------------------------------------------------------------------
# writer


@functools.partial(jax.jit, static_argnames=("model", "k"))
def teacher_topk(model, params, prompt_BxP, pmask_BxP, comp_BxC, cmask_BxC, temperature, *, k):
  """(ids [B, C, k] int32, log-probs [B, C, k] float32): the top-k of the teacher's tempered
  distribution at every completion position."""
  tokens_BxT = jnp.concatenate([prompt_BxP, comp_BxC], axis=1)
  mask_BxT = jnp.concatenate([pmask_BxP, cmask_BxC], axis=1)
  logits_BxTxV = score(model, params, tokens_BxT, mask_BxT)
  logits_BxCxV = logits_BxTxV[:, prompt_BxP.shape[1] - 1 : -1]
  logp_BxCxV = divergences.log_softmax(
      divergences.softcap_and_scale(logits_BxCxV, None, temperature)
  )
  lp_BxCxK, ids_BxCxK = jax.lax.top_k(logp_BxCxV, k)
  return ids_BxCxK.astype(jnp.int32), lp_BxCxK


def _write_json_atomic(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def _shard_dir(out_dir: str, s: int) -> str:
  return os.path.join(out_dir, f"shard-{s:05d}")


def _pad_batch(batch: dict, size: int) -> dict:
  n = batch["prompt_tokens"].shape[0]
  if n == size:
    return batch
  return {k: np.concatenate([v, np.repeat(v[-1:], size - n, 0)]) for k, v in batch.items()}


def _write_shard(path: str, records, tokenizer, model, params, config, k: int, batch_size: int):
  c = config.data
  ds = data.make_dataset(
      records,
      tokenizer,
      batch_size=batch_size,
      max_prompt_len=c.max_prompt_len,
      max_completion_len=c.max_completion_len,
      shuffle=False,
      num_epochs=1,
      shard_index=0,
      shard_count=1,
      chat_family=c.chat_family or None,
      drop_remainder=False,
      even_shards=False,
  )
  ids, lps, toks, lengths = [], [], [], []
  for batch in ds:
    n = batch["prompt_tokens"].shape[0]
    b = _pad_batch(batch, batch_size)  # one compiled shape for the last, smaller batch too
    ids_BxCxK, lp_BxCxK = jax.device_get(
        teacher_topk(
            model,
            params,
            b["prompt_tokens"],
            b["prompt_mask"],
            b["completion_tokens"],
            b["completion_mask"],
            jnp.float32(config.gkd.temperature),
            k=k,
        )
    )
    for row in range(n):
      valid = batch["completion_mask"][row] == 1
      ids.append(ids_BxCxK[row][valid])
      lps.append(lp_BxCxK[row][valid])
      toks.append(batch["completion_tokens"][row][valid])
      lengths.append(int(valid.sum()))
  tmp = path + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)  # a shard an earlier run did not finish
  os.makedirs(tmp)
  np.save(os.path.join(tmp, "ids.npy"), np.concatenate(ids).astype(np.int32).reshape(-1, k))
  np.save(os.path.join(tmp, "logprobs.npy"), np.concatenate(lps).astype(np.float32).reshape(-1, k))
  np.save(os.path.join(tmp, "tokens.npy"), np.concatenate(toks).astype(np.int32))
  np.save(
      os.path.join(tmp, "offsets.npy"), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  )
  os.replace(tmp, path)


def write_cache(
    config,
    out_dir: str,
    *,
    records_per_shard: int = DEFAULT_RECORDS_PER_SHARD,
    batch_size: Optional[int] = None,
    max_shards: Optional[int] = None,
) -> dict:
  """Runs the teacher over data.train_path's completions and writes the cache (module docstring).

  Resumable: shards already in `out_dir` are kept; a cache of another run there is refused.
  `batch_size` defaults to eval.batch_size; `max_shards` stops after writing that many (tests).
  Returns {"written": [shard indices], "kept": [...], "num_shards": n}.
  """
  from gkd_jax.models.hf import load_pretrained  # pylint: disable=g-import-not-at-top
  from gkd_jax.tokenizers import load_tokenizer  # pylint: disable=g-import-not-at-top

  config = run_config.from_config(config)
  if not config.teacher.path:
    raise ValueError("teacher.path='' : cache-teacher needs a teacher checkpoint")
  if not config.data.train_path or not os.path.isfile(config.data.train_path):
    raise ValueError(f"data.train_path={config.data.train_path!r} is not a file")
  if records_per_shard <= 0:
    raise ValueError(f"records_per_shard={records_per_shard} must be > 0")
  tokenizer = load_tokenizer(config.tokenizer.path or config.student.path)
  meta = run_metadata(config, tokenizer)
  records = data.read_jsonl_records(config.data.train_path)
  if meta["k"] > tokenizer.vocab_size or meta["k"] < 1:
    raise ValueError(f"gkd.teacher_cache_k={meta['k']} must be in [1, {tokenizer.vocab_size}]")
  num_shards = -(-len(records) // records_per_shard)
  meta.update(num_records=len(records), records_per_shard=records_per_shard, num_shards=num_shards)
  meta_path = os.path.join(out_dir, METADATA)
  if os.path.exists(meta_path):
    old = read_metadata(out_dir)
    check_compatible(old, meta, where=f"existing cache {out_dir}")
    if old.get("records_per_shard") != records_per_shard:
      raise ValueError(
          f"existing cache {out_dir} has records_per_shard={old.get('records_per_shard')}"
          f", not {records_per_shard}"
      )
  else:
    os.makedirs(out_dir, exist_ok=True)
    _write_json_atomic(meta_path, meta)
  dtype = models.DTYPES[config.teacher.dtype]
  model = params = None
  written, kept = [], []
  for s in range(num_shards):
    path = _shard_dir(out_dir, s)
    if os.path.isdir(path):
      kept.append(s)
      continue
    if max_shards is not None and len(written) >= max_shards:
      break
    if model is None:
      model, params = load_pretrained(config.teacher.path, dtype=dtype)
    _write_shard(
        path,
        records[s * records_per_shard : (s + 1) * records_per_shard],
        tokenizer,
        model,
        params,
        config,
        meta["k"],
        batch_size or int(config.eval.batch_size),
    )
    written.append(s)
  return {"written": written, "kept": kept, "num_shards": num_shards}


# ---------------------------------------------------------------------------------------------------
# reader


def read_metadata(cache_dir: str) -> dict:
  path = os.path.join(cache_dir, METADATA)
  try:
    with open(path) as f:
      meta = json.load(f)
  except FileNotFoundError:
    raise ValueError(f"{cache_dir} is not a teacher cache (no {METADATA})") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e.msg})") from None
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(
        f"{path}: format_version={meta.get('format_version')!r}, this code reads "
        f"{FORMAT_VERSION}"
    )
  return meta


class TeacherCache:
  """Grain `RandomAccessDataSource` over a finished cache: `cache[i]` is record i (module docstring).

  Shards are memory-mapped on first use (and re-opened after pickling, e.g. in Grain workers).
  """

  def __init__(self, cache_dir: str):
    self.cache_dir = cache_dir
    self.metadata = read_metadata(cache_dir)
    m = self.metadata
    missing = [s for s in range(m["num_shards"]) if not os.path.isdir(_shard_dir(cache_dir, s))]
    if missing:
      raise ValueError(
          f"teacher cache {cache_dir} is incomplete: {len(missing)} of {m['num_shards']}"
          f" shards missing (first: {missing[0]}); rerun cache-teacher to finish it"
      )
    self.k = int(m["k"])
    self.length = int(m["data"]["max_completion_len"])
    self._shards = {}

  def __len__(self) -> int:
    return int(self.metadata["num_records"])

  def __getstate__(self):
    return {"cache_dir": self.cache_dir}

  def __setstate__(self, state):
    self.__init__(state["cache_dir"])

  def _shard(self, s: int) -> dict:
    if s not in self._shards:
      d = _shard_dir(self.cache_dir, s)
      self._shards[s] = {
          name: np.load(os.path.join(d, f"{name}.npy"), mmap_mode="r")
          for name in ("ids", "logprobs", "tokens", "offsets")
      }
    return self._shards[s]

  def __getitem__(self, record_index) -> dict:
    i = int(record_index)
    if not 0 <= i < len(self):
      raise IndexError(f"record {i} is outside the cache's {len(self)} records")
    rps = int(self.metadata["records_per_shard"])
    shard = self._shard(i // rps)
    start, end = (int(x) for x in shard["offsets"][i % rps : i % rps + 2])
    n, C, k = end - start, self.length, self.k
    ids = np.tile(np.arange(k, dtype=np.int32), (C, 1))
    lps = np.full((C, k), -np.inf, np.float32)
    toks = np.zeros((C,), np.int32)
    ids[:n] = shard["ids"][start:end]
    lps[:n] = shard["logprobs"][start:end]
    toks[:n] = shard["tokens"][start:end]
    return {"teacher_topk_ids": ids, "teacher_topk_logprobs": lps, "cached_completion_tokens": toks}


def stack_rows(cache: TeacherCache, rows) -> dict:
  """The cache entries of record indices `rows` [b], stacked: ids / logprobs [b, C, k], tokens [b, C]
  (what `data.TokenizeRows` would add to a batch for its rows)."""
  entries = [cache[int(i)] for i in np.asarray(rows)]
  return {key: np.stack([e[key] for e in entries]) for key in entries[0]}
