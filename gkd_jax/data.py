"""Grain input pipelines: JSONL records -> tokens -> fixed-shape numpy batches.

A data file has one JSON object per line, either

  {"prompt": "...", "completion": "..."}        # completion optional (on-policy runs need none)
  {"prompt": "...", "completion_ids": [...]}    # the completion as token ids, used verbatim
  {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}

`completion_ids` (also on a chat record without a final assistant message) keeps a model's own
tokens, e.g. a teacher's sampled answer with its end token: decoding to text and re-encoding would
change the ids of a few percent of answers. Nothing is appended to them.
A chat record's last message, when it is the assistant's, is the completion; the messages before
it are rendered into the prompt, ending with the opening of the assistant turn: with the tokenizer's
own chat template when it has one (`gkd_jax.chat_template`: the ids transformers'
apply_chat_template gives), else in `chat_family`'s format (`tokenizers.apply_chat_template`, BOS
first). Chat records need one of the two. A plain prompt gets a BOS when the tokenizer adds one by
default (`add_bos_default`: the checkpoint's add_bos_token).

Every batch is a dict of int32 numpy arrays, B = the per-process batch size:

  prompt_tokens      [B,P]  LEFT-padded with pad_id (BOS first when the tokenizer has one)
  prompt_mask        [B,P]  1 on real prompt tokens
  completion_tokens  [B,C]  RIGHT-padded; the completion followed by its end token
  completion_mask    [B,C]  1 on completion tokens and the end token; all 0 for a prompt-only record

The end token is the chat end-of-turn token for chat records (`completion_end_id`: the one the
tokenizer's template writes after an assistant message, else the family's) and the tokenizer's EOS
for plain records (the end-of-turn token too when `chat_family` is set); a sampler should stop at
the same id.

Truncation policy: a prompt longer than P keeps its LAST P tokens (what the completion directly follows),
with the BOS put back in front when it had one and the tokenizer adds BOS by default; it is never
dropped. A completion plus its end token
longer than C is cut to its first C tokens, so the end token is lost only when the completion itself is
cut.

Order and sharding: process `shard_index` of `shard_count` reads records shard_index, shard_index +
shard_count, ... (disjoint; together they cover the file; with `even_shards` the last
len % shard_count records are dropped so every process has the same number of batches). Each epoch of
the shard is shuffled with a seed derived from (`seed`, epoch): the same seed gives the same batches.
With `split_global_batches` (what the trainer uses) every process instead walks the same global order
and takes its `batch_size` rows of each global batch of shard_count x batch_size: process p's rows
are rows p*batch_size ... of the batch one process reads with the global batch size, so the global
batches, and a run's results, do not depend on the number of processes.
Several teachers (`teachers`, two or more names): a record may name its teacher,
`{"prompt": ..., "teacher": "math"}` (records without one go to `default_teacher`), and every global
batch holds records of one teacher, with `teacher_index` [B] int32 (its position in `teachers`), so
that a train step runs only that teacher (see `TeacherBatches` for the order).
The iterator's position is `iterator.get_state()` / `set_state()`, and Grain's
`grain.checkpoint.CheckpointSave/CheckpointRestore` store it with Orbax (see gkd_jax.checkpoints): a
resumed run sees exactly the batches the uninterrupted run would have seen next.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

from absl import flags
import grain
import jax
import numpy as np

from gkd_jax import chat_template
from gkd_jax import tokenizers as tok_lib

ROLES = ("system", "user", "assistant")


def _record_error(path: str, lineno: int, message: str) -> ValueError:
  return ValueError(f"{path}:{lineno}: {message}")


def _validate_record(record, path: str, lineno: int) -> dict:
  """Returns the record normalised to {"prompt", "completion"} or {"messages"}; raises on bad input."""
  if not isinstance(record, dict):
    raise _record_error(path, lineno, f"expected a JSON object, got {type(record).__name__}")
  if "messages" in record:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
      raise _record_error(path, lineno, "'messages' must be a non-empty list of {role, content}")
    for i, m in enumerate(messages):
      if (
          not isinstance(m, dict)
          or m.get("role") not in ROLES
          or not isinstance(m.get("content"), str)
      ):
        raise _record_error(
            path,
            lineno,
            f"messages[{i}] must be {{'role': one of {ROLES}, "
            f"'content': string}}, got {json.dumps(m)[:80]}",
        )
    if not any(m["role"] == "user" for m in messages):
      raise _record_error(path, lineno, "'messages' has no user message")
    out = {"messages": messages, **_completion_ids(record, path, lineno)}
    if "completion_ids" in out and messages[-1]["role"] == "assistant":
      raise _record_error(path, lineno, "'completion_ids' and a final assistant message: give one")
    return _with_teacher(out, record, path, lineno)
  if "prompt" not in record:
    raise _record_error(
        path,
        lineno,
        "missing 'prompt' (records need 'prompt' and an optional "
        f"'completion', or chat 'messages'); keys: {sorted(record)}",
    )
  prompt, completion = record["prompt"], record.get("completion")
  if not isinstance(prompt, str) or not prompt:
    raise _record_error(path, lineno, f"'prompt' must be a non-empty string, got {prompt!r:.80}")
  if completion is not None and not isinstance(completion, str):
    raise _record_error(path, lineno, f"'completion' must be a string, got {completion!r:.80}")
  ids = _completion_ids(record, path, lineno)
  if ids and completion is not None:
    raise _record_error(path, lineno, "'completion' and 'completion_ids': give one")
  return _with_teacher({"prompt": prompt, "completion": completion, **ids}, record, path, lineno)


def _completion_ids(record: dict, path: str, lineno: int) -> dict:
  """{"completion_ids": [...]} when the record gives its completion as token ids, else {}."""
  if "completion_ids" not in record:
    return {}
  ids = record["completion_ids"]
  if (
      not isinstance(ids, list)
      or not ids
      or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
  ):
    raise _record_error(
        path, lineno, f"'completion_ids' must be a non-empty list of token ids, got {ids!r:.80}"
    )
  return {"completion_ids": ids}


def _with_teacher(normalised: dict, record: dict, path: str, lineno: int) -> dict:
  """Keeps the record's optional "teacher" (the name of the teacher that scores it)."""
  if "teacher" not in record:
    return normalised
  name = record["teacher"]
  if not isinstance(name, str) or not name:
    raise _record_error(path, lineno, f"'teacher' must be a non-empty string, got {name!r:.80}")
  return {**normalised, "teacher": name}


def read_jsonl_records(path: str) -> list[dict]:
  """Reads and validates every line of a JSONL file (blank lines skipped); errors name the line."""
  records = []
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise _record_error(
            path, lineno, f"not UTF-8 text (byte {raw[e.start]:#04x} at column " f"{e.start + 1})"
        ) from None
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise _record_error(path, lineno, f"not valid JSON ({e.msg} at column {e.colno})") from None
      records.append(_validate_record(record, path, lineno))
  if not records:
    raise ValueError(f"{path}: no records")
  return records


_FAMILIES = ", ".join(tok_lib.CHAT_FAMILIES)


def has_chat_template(tokenizer) -> bool:
  """Whether the tokenizer brings its own chat template (which then renders chat records)."""
  return bool(getattr(tokenizer, "chat_template", None))


def completion_end_id(tokenizer, chat_family: Optional[str] = None) -> int:
  """The id that ends a chat completion: the end-of-turn token of the tokenizer's own chat template
  when it has one, else the family's; EOS without either."""
  if has_chat_template(tokenizer):
    return chat_template.end_of_turn_id(tokenizer)
  if chat_family:
    i = tokenizer.token_to_id(tok_lib.end_of_turn_token(chat_family))
    if i is not None:
      return i
  return tokenizer.eos_id


def _split_completion(messages: Sequence[dict]) -> tuple[list, Optional[str]]:
  """(the messages of the prompt, the final assistant message's content or None)."""
  if messages[-1]["role"] == "assistant":
    return list(messages[:-1]), messages[-1]["content"]
  return list(messages), None


def record_text(record: dict, chat_family: Optional[str]) -> tuple[str, Optional[str]]:
  """(prompt text, completion text or None) of a validated record; chats in `chat_family`'s
  format."""
  if "messages" not in record:
    return record["prompt"], record["completion"]
  if not chat_family:
    raise ValueError(f"chat 'messages' records need a chat_family ({_FAMILIES})")
  messages, completion = _split_completion(record["messages"])
  return tok_lib.apply_chat_template(messages, chat_family, add_generation_prompt=True), completion


def record_ids(tokenizer, record: dict, chat_family: Optional[str]) -> tuple[list, Optional[str]]:
  """(prompt ids, completion text or None) of a validated record (see the module docstring)."""
  if "messages" in record and has_chat_template(tokenizer):
    messages, completion = _split_completion(record["messages"])
    return chat_template.encode_chat(tokenizer, messages, add_generation_prompt=True), completion
  prompt, completion = record_text(record, chat_family)
  return tokenizer.encode(prompt, add_bos=True if "messages" in record else None), completion


def truncate_prompt(ids: Sequence[int], max_len: int, bos_id: Optional[int]) -> list[int]:
  """The last `max_len` tokens, with a leading BOS kept in front (see the module docstring)."""
  ids = list(ids)
  if len(ids) <= max_len:
    return ids
  if bos_id is not None and ids and ids[0] == bos_id:
    return [bos_id] + ids[len(ids) - (max_len - 1) :]
  return ids[len(ids) - max_len :]


class TokenizeAndPad(grain.transforms.Map):
  """Record -> fixed-shape int32 arrays for one example (see the module docstring for the layout)."""

  def __init__(
      self,
      tokenizer,
      max_prompt_len: int,
      max_completion_len: int,
      chat_family: Optional[str] = None,
  ):
    self.tokenizer = tokenizer
    self.max_prompt_len = max_prompt_len
    self.max_completion_len = max_completion_len
    self.chat_family = chat_family
    self.end_id = completion_end_id(tokenizer, chat_family)  # chat records
    self.plain_end_id = self.end_id if chat_family else tokenizer.eos_id
    self.kept_bos = tokenizer.bos_id if getattr(tokenizer, "add_bos_default", True) else None

  def map(self, record: dict) -> dict:
    tok, P, C = self.tokenizer, self.max_prompt_len, self.max_completion_len
    prompt_ids, completion = record_ids(tok, record, self.chat_family)
    prompt_ids = truncate_prompt(prompt_ids, P, self.kept_bos)
    prompt_tokens_P = np.full((P,), tok.pad_id, np.int32)
    prompt_mask_P = np.zeros((P,), np.int32)
    if prompt_ids:
      prompt_tokens_P[P - len(prompt_ids) :] = prompt_ids
      prompt_mask_P[P - len(prompt_ids) :] = 1
    completion_tokens_C = np.full((C,), tok.pad_id, np.int32)
    completion_mask_C = np.zeros((C,), np.int32)
    if "completion_ids" in record:  # verbatim: the end token is there when the answer ended
      completion_ids = list(record["completion_ids"])[:C]
      if max(completion_ids) >= tok.vocab_size:
        raise ValueError(
            f"completion_ids has id {max(completion_ids)}, outside the tokenizer's "
            f"{tok.vocab_size}-token vocabulary"
        )
      completion_tokens_C[: len(completion_ids)] = completion_ids
      completion_mask_C[: len(completion_ids)] = 1
    elif completion is not None:
      end_id = self.end_id if "messages" in record else self.plain_end_id
      completion_ids = (tok.encode(completion, add_bos=False) + [end_id])[:C]
      completion_tokens_C[: len(completion_ids)] = completion_ids
      completion_mask_C[: len(completion_ids)] = 1
    return {
        "prompt_tokens": prompt_tokens_P,
        "prompt_mask": prompt_mask_P,
        "completion_tokens": completion_tokens_C,
        "completion_mask": completion_mask_C,
    }


def make_dataset(
    records: Sequence[dict],
    tokenizer,
    *,
    batch_size: int,
    max_prompt_len: int,
    max_completion_len: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: Optional[int] = None,
    shard_index: Optional[int] = None,
    shard_count: Optional[int] = None,
    worker_count: int = 0,
    chat_family: Optional[str] = None,
    drop_remainder: bool = True,
    even_shards: bool = True,
    split_global_batches: bool = False,
    row_extras=None,
    teachers: Sequence[str] = (),
    default_teacher: Optional[str] = None,
) -> grain.IterDataset:
  """The pipeline over in-memory records; `iter()` of the result yields batches (see make_loader).

  `row_extras(record indices [b]) -> {name: [b, ...] array}` adds per-record arrays to each batch
  (with split_global_batches only), e.g. `functools.partial(teacher_cache.stack_rows, cache)`.
  `teachers` (two or more names; with split_global_batches only): every global batch holds records
  of one teacher (a record's "teacher", else `default_teacher`) and carries `teacher_index` [b],
  the position of that name in `teachers` (see the module docstring)."""
  routed = len(teachers) > 1  # one teacher: every record's name checked, batches unchanged
  if (row_extras is not None or routed) and not split_global_batches:
    raise ValueError(
        "row_extras and teachers need split_global_batches=True (batches of record indices)"
    )
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
  if batch_size <= 0:
    raise ValueError(f"batch_size={batch_size} must be > 0")
  if max_prompt_len < 2 or max_completion_len < 1:
    raise ValueError(
        f"need max_prompt_len >= 2 and max_completion_len >= 1, got "
        f"{max_prompt_len}, {max_completion_len}"
    )
  if num_epochs is not None and num_epochs < 0:
    num_epochs = None  # -1 in configs: repeat forever
  if chat_family:
    chat_family = tok_lib.chat_family(chat_family)
  elif any("messages" in r for r in records) and not has_chat_template(tokenizer):
    raise ValueError(
        "the data has chat 'messages' records and the tokenizer has no chat template: set "
        f"data.chat_family ({_FAMILIES})"
    )
  records = list(records)
  teacher_R = teacher_indices(records, teachers, default_teacher) if teachers else None
  if split_global_batches:
    if routed:
      rows = TeacherBatches(teacher_R, batch_size, seed, shuffle, shard_index, shard_count)
      # A position past the end, never reached: repeating forever without an epoch-less index.
      epochs = num_epochs if num_epochs is not None else 2**40
      ds = grain.MapDataset.range(rows.batches_per_epoch * epochs).map(rows)
      row_extras = TeacherIndex(teacher_R, row_extras)
    else:
      ds = _global_batch_rows(
          records, batch_size, seed, shuffle, num_epochs, shard_index, shard_count, drop_remainder
      )
    ds = ds.map(
        TokenizeRows(
            records,
            TokenizeAndPad(tokenizer, max_prompt_len, max_completion_len, chat_family),
            row_extras,
        )
    )
    return _to_iter(ds, worker_count)
  if even_shards and shard_count > 1:
    records = records[: len(records) - len(records) % shard_count]
  ds = grain.MapDataset.source(records)[shard_index::shard_count]
  if len(ds) < batch_size and drop_remainder and num_epochs is not None:
    raise ValueError(
        f"shard {shard_index}/{shard_count} has {len(ds)} records, fewer than one "
        f"batch of {batch_size}"
    )
  if shuffle:
    ds = ds.shuffle(seed=seed)  # reshuffled every epoch by repeat() below
  ds = ds.map(TokenizeAndPad(tokenizer, max_prompt_len, max_completion_len, chat_family))
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  return _to_iter(ds, worker_count)


def _global_batch_rows(
    records, batch_size, seed, shuffle, num_epochs, shard_index, shard_count, drop_remainder
):
  """Record indices [batch_size] of this process's rows of every global batch (shard_count x
  batch_size rows, the batches one process would read with the global batch size)."""
  ds = grain.MapDataset.range(len(records))
  if shuffle:
    ds = ds.shuffle(seed=seed)  # the permutation `source(records).shuffle(seed)` applies
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  if num_epochs is not None:
    ds = ds[: len(ds) - len(ds) % shard_count]  # every process gets the same number of batches
    if not len(ds) and drop_remainder:
      raise ValueError(
          f"{len(records)} records make no global batch of {batch_size} x "
          f"{shard_count} processes"
      )
  return ds[shard_index::shard_count]


def teacher_indices(records, teachers: Sequence[str], default_teacher: Optional[str]) -> np.ndarray:
  """[R] int32: each record's position in `teachers` (its "teacher", else `default_teacher`)."""
  index = {name: i for i, name in enumerate(teachers)}
  out = np.empty((len(records),), np.int32)
  for r, record in enumerate(records):
    name = record.get("teacher", default_teacher)
    if name not in index:
      raise ValueError(
          f"record {r + 1} of the data has teacher={name!r}, not one of the configured "
          f"teachers ({', '.join(teachers)})"
      )
    out[r] = index[name]
  return out


class TeacherBatches(grain.transforms.Map):
  """Global batch number -> this process's record indices [batch_size]; every global batch (of
  shard_count x batch_size rows) holds records of one teacher. Epoch e shuffles the records with
  seed (seed, e), cuts each teacher's in that order into global batches (a teacher's last partial
  batch of the epoch is dropped) and shuffles the order of the batches; without shuffle, the
  teachers take turns, each one's batches in file order."""

  def __init__(self, teacher_R, batch_size, seed, shuffle, shard_index, shard_count):
    self.teacher_R, self.seed, self.shuffle = np.asarray(teacher_R), seed, shuffle
    self.rows = slice(shard_index * batch_size, (shard_index + 1) * batch_size)
    self.global_batch = batch_size * shard_count
    counts = np.bincount(self.teacher_R)
    self.batches_per_epoch = int(np.sum(counts // self.global_batch))
    if not self.batches_per_epoch:
      raise ValueError(
          f"no teacher has {self.global_batch} records (one global batch of {batch_size} x "
          f"{shard_count} processes); records per teacher: {counts.tolist()}"
      )
    self._epoch, self._order = None, None

  def epoch_order(self, epoch: int) -> np.ndarray:
    """[batches_per_epoch, global batch] record indices of the global batches of `epoch`."""
    rng = np.random.default_rng((self.seed, epoch))
    perm = rng.permutation(len(self.teacher_R)) if self.shuffle else np.arange(len(self.teacher_R))
    chunks = []
    for t in range(int(self.teacher_R.max()) + 1):
      mine = perm[self.teacher_R[perm] == t]
      mine = mine[: len(mine) - len(mine) % self.global_batch]
      chunks.append(mine.reshape(-1, self.global_batch))
    order = np.concatenate(chunks)
    if self.shuffle:
      return order[rng.permutation(len(order))]
    rank = np.concatenate([np.arange(len(c)) for c in chunks])  # teachers take turns
    return order[np.argsort(rank, kind="stable")]

  def map(self, i):
    epoch, j = divmod(int(i), self.batches_per_epoch)
    if epoch != self._epoch:  # consecutive batches share their epoch's order
      self._epoch, self._order = epoch, self.epoch_order(epoch)
    return self._order[j, self.rows]


class TeacherIndex:
  """Per-record extras: `teacher_index` [b] (and whatever `more` adds)."""

  def __init__(self, teacher_R, more=None):
    self.teacher_R, self.more = teacher_R, more

  def __call__(self, rows) -> dict:
    out = {"teacher_index": self.teacher_R[np.asarray(rows)]}
    if self.more is not None:
      out.update(self.more(rows))
    return out


class TokenizeRows(grain.transforms.Map):
  """Record indices [b] -> the stacked `TokenizeAndPad` arrays of those records."""

  def __init__(self, records, tokenize: "TokenizeAndPad", row_extras=None):
    self.records, self.tokenize, self.row_extras = records, tokenize, row_extras

  def map(self, rows):
    examples = [self.tokenize.map(self.records[int(i)]) for i in np.asarray(rows)]
    out = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    if self.row_extras is not None:  # e.g. the teacher cache's entries of these records
      out.update(self.row_extras(rows))
    return out


def _to_iter(ds, worker_count):
  # Records are in memory: no reader threads (GIL contention), a small prefetch buffer.
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if worker_count > 0:
    # Grain's worker processes read absl flags; outside an absl app (tests, notebooks) nobody has
    # parsed them yet, so mark the defaults as parsed.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it_ds


def make_loader(path: str, tokenizer, **kwargs) -> grain.IterDataset:
  """A Grain pipeline over a JSONL file; `iter(make_loader(...))` yields per-process batches.

  `make_dataset` over the file's records, with the same keyword arguments: `batch_size` is per
  process (global batch / process count); `num_epochs` None or -1 repeats forever;
  `shard_index`/`shard_count` default to jax.process_index()/process_count(); `worker_count` > 0
  moves tokenization into that many Grain worker processes (same batches, same order).
  """
  return make_dataset(read_jsonl_records(path), tokenizer, **kwargs)
