"""Grain pipeline: layout of batches, truncation, determinism, sharding, resume, bad lines."""

import json
import os

import numpy as np
import pytest

from gkd_jax import data, run_config, testing, tokenizers
from gkd_jax.tasks import arithmetic, asset_dir
from gkd_jax.tokenizers import apply_chat_template, load_tokenizer


@pytest.fixture(scope="module")
def tok():
  return load_tokenizer(asset_dir("arithmetic"))


def _write(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
  return str(path)


def _records(n, seed=0):
  return arithmetic.generate_examples(n, seed=seed, min_digits=1, max_digits=4)


def _collect(ds, n=None):
  out = []
  for i, b in enumerate(ds):
    if n is not None and i >= n:
      break
    out.append(b)
  return out


def _expected_row(tok, prompt, completion, P, C):
  """Independent construction of one row from the documented layout."""
  p = tok.encode(prompt, add_bos=True)
  if len(p) > P:
    p = [p[0]] + p[-(P - 1) :]
  pt = [tok.pad_id] * (P - len(p)) + p
  pm = [0] * (P - len(p)) + [1] * len(p)
  c = [] if completion is None else (tok.encode(completion, add_bos=False) + [tok.eos_id])[:C]
  ct = c + [tok.pad_id] * (C - len(c))
  cm = [1] * len(c) + [0] * (C - len(c))
  return pt, pm, ct, cm


def test_layout_matches_documented_padding(tmp_path, tok):
  rows = _records(7, seed=3)
  rows[2] = {"prompt": rows[2]["prompt"]}  # prompt-only record
  path = _write(tmp_path / "d.jsonl", rows)
  P, C = 16, 48
  batches = _collect(
      data.make_loader(
          path,
          tok,
          batch_size=3,
          max_prompt_len=P,
          max_completion_len=C,
          shuffle=False,
          num_epochs=1,
          shard_index=0,
          shard_count=1,
          drop_remainder=False,
      )
  )
  assert [b["prompt_tokens"].shape[0] for b in batches] == [3, 3, 1]
  got = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  for k, v in got.items():
    assert v.dtype == np.int32, k
  for i, r in enumerate(rows):
    pt, pm, ct, cm = _expected_row(tok, r["prompt"], r.get("completion"), P, C)
    np.testing.assert_array_equal(got["prompt_tokens"][i], pt)
    np.testing.assert_array_equal(got["prompt_mask"][i], pm)
    np.testing.assert_array_equal(got["completion_tokens"][i], ct)
    np.testing.assert_array_equal(got["completion_mask"][i], cm)
    # Decoding the unpadded tokens gives the text back; the EOS is the last unmasked token.
    assert tok.decode(got["prompt_tokens"][i][got["prompt_mask"][i] == 1]) == r["prompt"]
    if "completion" in r:
      n = got["completion_mask"][i].sum()
      assert got["completion_tokens"][i][n - 1] == tok.eos_id
      assert tok.decode(got["completion_tokens"][i][: n - 1]) == r["completion"]
  assert got["completion_mask"][2].sum() == 0
  assert got["prompt_tokens"][:, 0].tolist().count(tok.bos_id) < len(rows)  # left padding


def test_truncation_keeps_prompt_tail_and_bos(tmp_path, tok):
  long_prompt = "Q: " + "1234567890" * 3 + "+5\nA:"
  rows = [
      {"prompt": long_prompt, "completion": " 1+2=3|7+8=15|=153"},
      {"prompt": "Q: 1+2\nA:", "completion": " 1+2=3|=3"},
  ]
  path = _write(tmp_path / "d.jsonl", rows)
  P = 8
  full_c = tok.encode(rows[0]["completion"], add_bos=False)
  b = next(
      iter(
          data.make_loader(
              path,
              tok,
              batch_size=2,
              max_prompt_len=P,
              max_completion_len=len(full_c),
              shuffle=False,
              shard_index=0,
              shard_count=1,
          )
      )
  )
  ids = tok.encode(long_prompt)
  assert b["prompt_tokens"][0].tolist() == [tok.bos_id] + ids[-(P - 1) :]
  assert b["prompt_mask"][0].tolist() == [1] * P
  assert tok.decode(b["prompt_tokens"][0]).endswith("+5\nA:")
  # The completion fills C exactly: it is cut and loses its EOS; the short one keeps it.
  assert b["completion_tokens"][0].tolist() == full_c
  assert tok.eos_id not in b["completion_tokens"][0].tolist()
  n = b["completion_mask"][1].sum()
  assert b["completion_tokens"][1][n - 1] == tok.eos_id
  # A completion that fits exactly with its EOS keeps the EOS.
  b2 = next(
      iter(
          data.make_loader(
              path,
              tok,
              batch_size=2,
              max_prompt_len=P,
              max_completion_len=len(full_c) + 1,
              shuffle=False,
              shard_index=0,
              shard_count=1,
          )
      )
  )
  assert b2["completion_tokens"][0].tolist() == full_c + [tok.eos_id]
  assert data.truncate_prompt([5, 6, 7], 2, bos_id=None) == [6, 7]
  assert data.truncate_prompt([2, 6, 7, 8], 2, bos_id=2) == [2, 8]


def _prompts(batches, tok):
  return [
      tok.decode(row[m == 1])
      for b in batches
      for row, m in zip(b["prompt_tokens"], b["prompt_mask"])
  ]


def test_deterministic_shuffle_and_epochs(tmp_path, tok):
  rows = _records(24, seed=1)
  path = _write(tmp_path / "d.jsonl", rows)
  kw = dict(batch_size=4, max_prompt_len=16, max_completion_len=8, shard_index=0, shard_count=1)
  a = _prompts(_collect(data.make_loader(path, tok, seed=7, **kw), 12), tok)
  b = _prompts(_collect(data.make_loader(path, tok, seed=7, **kw), 12), tok)
  c = _prompts(_collect(data.make_loader(path, tok, seed=8, **kw), 12), tok)
  assert a == b and a != c
  everything = sorted(r["prompt"] for r in rows)
  assert sorted(a[:24]) == everything and sorted(a[24:]) == everything  # epochs are permutations
  assert a[:24] != a[24:]  # ... reshuffled per epoch
  assert a[:24] != [r["prompt"] for r in rows]
  finite = _collect(data.make_loader(path, tok, seed=7, num_epochs=2, **kw))
  assert len(finite) == 12


def test_two_shards_disjoint_and_covering(tmp_path, tok):
  rows = _records(21, seed=2)
  path = _write(tmp_path / "d.jsonl", rows)
  kw = dict(
      batch_size=2,
      max_prompt_len=16,
      max_completion_len=8,
      seed=3,
      num_epochs=1,
      shard_count=2,
      drop_remainder=False,
  )
  s0 = _prompts(_collect(data.make_loader(path, tok, shard_index=0, even_shards=False, **kw)), tok)
  s1 = _prompts(_collect(data.make_loader(path, tok, shard_index=1, even_shards=False, **kw)), tok)
  assert not set(s0) & set(s1)
  assert sorted(s0 + s1) == sorted(r["prompt"] for r in rows)
  # even_shards: the same number of records on every process (one record dropped here).
  e0 = _collect(data.make_loader(path, tok, shard_index=0, **kw))
  e1 = _collect(data.make_loader(path, tok, shard_index=1, **kw))
  assert len(_prompts(e0, tok)) == len(_prompts(e1, tok)) == 10


@pytest.mark.parametrize("num_epochs, shuffle", [(-1, True), (1, False)])
def test_split_global_batches_do_not_depend_on_the_process_count(
    tmp_path, tok, num_epochs, shuffle
):
  path = _write(tmp_path / "d.jsonl", _records(21, seed=4))
  kw = dict(
      max_prompt_len=16,
      max_completion_len=8,
      seed=3,
      num_epochs=num_epochs,
      shuffle=shuffle,
      split_global_batches=True,
  )
  n_batches = 6 if num_epochs == -1 else 2  # 21 records: 2 global batches of 8 in one epoch
  one = _collect(
      data.make_loader(path, tok, batch_size=8, shard_index=0, shard_count=1, **kw), n_batches + 1
  )
  # The single-process batches are those of the plain pipeline (same shuffle, same epochs).
  plain = _collect(
      data.make_loader(
          path,
          tok,
          batch_size=8,
          shard_index=0,
          shard_count=1,
          **dict(kw, split_global_batches=False),
      ),
      n_batches + 1,
  )
  assert len(one) == len(plain)
  for a, b in zip(one, plain):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  for count in (2, 4):
    shards = [
        _collect(
            data.make_loader(
                path, tok, batch_size=8 // count, shard_index=i, shard_count=count, **kw
            ),
            n_batches + 1,
        )
        for i in range(count)
    ]
    assert all(len(s) == len(one) for s in shards)
    for step, global_batch in enumerate(one):
      for k, value in global_batch.items():
        np.testing.assert_array_equal(np.concatenate([s[step][k] for s in shards]), value)


def test_iterator_state_resume_gives_same_batches(tmp_path, tok):
  path = _write(tmp_path / "d.jsonl", _records(30, seed=4))
  kw = dict(
      batch_size=4, max_prompt_len=16, max_completion_len=12, seed=5, shard_index=0, shard_count=1
  )
  it = iter(data.make_loader(path, tok, **kw))
  for _ in range(9):  # crosses an epoch boundary (30 records / 4)
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(5)]
  resumed = iter(data.make_loader(path, tok, **kw))
  resumed.set_state(json.loads(json.dumps(state)))  # the state survives JSON, as Grain saves it
  got = [next(resumed) for _ in range(5)]
  for w, g in zip(want, got):
    for k in w:
      np.testing.assert_array_equal(w[k], g[k])


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"completion": "x"}', "missing 'prompt'"),
        ('{"prompt": "a", "completion": 3}', "'completion' must be a string"),
        ('{"prompt": ""}', "'prompt' must be a non-empty string"),
        ('{"prompt": "a"', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "messages[0]"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', "no user message"),
        ('{"prompt": "a", "completion_ids": [1, -2]}', "'completion_ids' must be"),
        ('{"prompt": "a", "completion_ids": []}', "'completion_ids' must be"),
        ('{"prompt": "a", "completion": "b", "completion_ids": [1]}', "give one"),
        (
            '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]'
            ', "completion_ids": [1]}',
            "give one",
        ),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
  good = json.dumps({"prompt": "Q: 1+1\nA:", "completion": " 1+1=2|=2"})
  path = _write(tmp_path / "bad.jsonl", [good, "", good, line, good])
  with pytest.raises(ValueError) as e:
    data.read_jsonl_records(path)
  assert str(e.value).startswith(f"{path}:4: ")
  assert message in str(e.value)


def test_completion_ids_are_used_verbatim(tmp_path, tok):
  """Token-id completions (a teacher's own tokens) are copied as given: no re-encoding, nothing
  appended, cut to C; ids outside the vocabulary are refused."""
  rng = np.random.default_rng(5)
  ids = [rng.integers(0, tok.vocab_size, n).tolist() for n in (3, 9, 20)]
  rows = [{"prompt": "Q: 1+1\nA:", "completion_ids": x} for x in ids]
  C = 12
  (batch,) = _collect(
      data.make_loader(
          _write(tmp_path / "d.jsonl", rows),
          tok,
          batch_size=3,
          max_prompt_len=8,
          max_completion_len=C,
          shuffle=False,
          num_epochs=1,
          shard_index=0,
          shard_count=1,
      )
  )
  for i, x in enumerate(ids):
    n = min(len(x), C)
    np.testing.assert_array_equal(batch["completion_tokens"][i][:n], x[:n])
    assert batch["completion_mask"][i].tolist() == [1] * n + [0] * (C - n)
  bad = _write(tmp_path / "bad.jsonl", [{"prompt": "a", "completion_ids": [tok.vocab_size]}])
  loader = data.make_loader(
      bad, tok, batch_size=1, max_prompt_len=8, max_completion_len=C, shard_index=0, shard_count=1
  )
  with pytest.raises(ValueError, match="outside the tokenizer"):
    next(iter(loader))


def test_empty_file_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="no records"):
    data.read_jsonl_records(_write(tmp_path / "e.jsonl", ["", "  "]))


def test_chat_records_use_template_and_end_of_turn(tmp_path):
  tok = load_tokenizer(
      os.path.dirname(testing.build_tokenizer_json(str(tmp_path / "tok"), "chatml"))
  )
  msgs = [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Hello teacher"},
      {"role": "assistant", "content": "Hello student."},
  ]
  path = _write(tmp_path / "chat.jsonl", [{"messages": msgs}, {"messages": msgs[:2]}])
  with pytest.raises(ValueError, match="chat_family"):
    data.make_loader(
        path,
        tok,
        batch_size=2,
        max_prompt_len=64,
        max_completion_len=16,
        shard_index=0,
        shard_count=1,
    )
  b = next(
      iter(
          data.make_loader(
              path,
              tok,
              batch_size=2,
              max_prompt_len=64,
              max_completion_len=16,
              shuffle=False,
              chat_family="qwen2",
              shard_index=0,
              shard_count=1,
          )
      )
  )
  end = tok.token_to_id("<|im_end|>")
  assert data.completion_end_id(tok, "chatml") == end
  prompt = apply_chat_template(msgs[:2], "chatml")
  assert tok.decode(b["prompt_tokens"][0][b["prompt_mask"][0] == 1], skip_special=False) == prompt
  n = b["completion_mask"][0].sum()
  assert b["completion_tokens"][0][:n].tolist() == tok.encode("Hello student.", add_bos=False) + [
      end
  ]
  assert b["completion_mask"][1].sum() == 0  # last message is the user's: prompt only


def test_chat_errors_name_every_family_and_every_family_renders(tmp_path):
  """The families data.chat_family accepts are the ones the data pipeline renders and names."""
  accepted = run_config.schema()["data.chat_family"]
  msgs = [
      {"role": "user", "content": "Hello teacher"},
      {"role": "assistant", "content": "Hello student."},
  ]
  for family in tokenizers.CHAT_FAMILIES:
    assert accepted(family) is None
    assert data.record_text({"messages": msgs}, family) == (
        apply_chat_template(msgs[:1], family),
        "Hello student.",
    )
  path = _write(tmp_path / "chat.jsonl", [{"messages": msgs}])
  tok = load_tokenizer(os.path.dirname(testing.build_tokenizer_json(str(tmp_path / "t"))))
  with pytest.raises(ValueError) as loader_error:
    data.make_loader(
        path,
        tok,
        batch_size=1,
        max_prompt_len=64,
        max_completion_len=16,
        shard_index=0,
        shard_count=1,
    )
  with pytest.raises(ValueError) as record_error:
    data.record_text({"messages": msgs}, None)
  for error in (loader_error, record_error):
    assert all(family in str(error.value) for family in tokenizers.CHAT_FAMILIES), error.value


def test_worker_processes_give_the_same_batches(tmp_path, tok):
  path = _write(tmp_path / "d.jsonl", _records(16, seed=6))
  kw = dict(
      batch_size=4, max_prompt_len=16, max_completion_len=12, seed=1, shard_index=0, shard_count=1
  )
  want = _collect(data.make_loader(path, tok, **kw), 6)
  got = _collect(data.make_loader(path, tok, worker_count=1, **kw), 6)
  for w, g in zip(want, got):
    for k in w:
      np.testing.assert_array_equal(w[k], g[k])
