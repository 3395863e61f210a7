"""GGUF in and out on tiny random models: round trips per tensor type, and bad files refused.

The real released models are checked against transformers' own GGUF loader in test_real_models.py.
"""

import os
import subprocess
import sys

import gguf
import jax
import numpy as np
import pytest

import gkd_jax
from gkd_jax import testing, tokenizers
from gkd_jax.models import FULL, SLIDING, gguf_write
from gkd_jax.models import gguf as gguf_in

VOCAB = 120
# Families GGUF can carry: Llama (no llama3 RoPE scaling: llama.cpp keeps it in a tensor) and a
# Gemma 3 with its own 5:1 pattern, local RoPE base and query scale (what llama.cpp assumes).
FAMILIES = {
    "llama": dict(rope_scaling=None, vocab_size=VOCAB),
    "gemma3": dict(
        vocab_size=VOCAB,
        num_layers=6,
        layer_types=(SLIDING,) * 5 + (FULL,),
        query_pre_attn_scalar=8.0,
    ),
}
# Worst |Δw| relative to max|w| each tensor type may introduce (f16: 2^-11, bf16: 2^-8, q8_0: one
# step of 127 levels per block of 32 values).
REL_ERROR = {"f32": 0.0, "f16": 2.0**-11, "bf16": 2.0**-8, "q8_0": 1.0 / 127}


@pytest.fixture(scope="module")
def spm_tokenizer(tmp_path_factory):
  path = testing.build_sentencepiece(tmp_path_factory.mktemp("spm"), vocab_size=VOCAB)
  return tokenizers.load_tokenizer(path)


def _leaves(params):
  return {
      jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)
  }


@pytest.mark.parametrize("qtype", gguf_write.QTYPES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_round_trip(family, qtype, spm_tokenizer, tmp_path):
  model, params = testing.tiny(family, seed=3, **FAMILIES[family])
  file = gguf_write.save_gguf(tmp_path / "m.gguf", model, params, spm_tokenizer, qtype=qtype)
  model2, params2 = gkd_jax.load_pretrained(file)
  c = model.config
  assert model2.config == c.replace(
      bos_id=spm_tokenizer.bos_id, eos_id=spm_tokenizer.eos_id, pad_id=spm_tokenizer.pad_id
  )
  a, b = _leaves(params), _leaves(params2)
  assert a.keys() == b.keys()
  for k in a:
    scale = np.abs(a[k]).max()
    # Gemma norms travel as 1 + w in float32: one rounding of (1 + w) - 1.
    tol = REL_ERROR[qtype] * scale if a[k].ndim > 1 else (2e-7 if family == "gemma3" else 0.0)
    np.testing.assert_allclose(b[k], a[k], rtol=0, atol=tol, err_msg=k)
  if qtype == "f32":
    tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 9))
    mask = np.ones_like(tokens)
    np.testing.assert_allclose(
        gkd_jax.score(model2, params2, tokens, mask),
        gkd_jax.score(model, params, tokens, mask),
        rtol=0,
        atol=1e-5,
    )


def test_llama_rows_are_permuted_in_the_file(spm_tokenizer, tmp_path):
  """The file holds llama.cpp's q/k row order (what llama.cpp's RoPE expects), not HF's."""
  model, params = testing.tiny("llama", **FAMILIES["llama"])
  file = gguf_write.save_gguf(tmp_path / "m.gguf", model, params, spm_tokenizer)
  stored = {t.name: t for t in gguf.GGUFReader(file).tensors}["blk.0.attn_q.weight"]
  c = model.config
  q_hf = np.asarray(params["layers"][0]["attn"]["q"]).reshape(c.embed_dim, -1).T  # [H*Dh, D]
  x = np.asarray(stored.data).reshape(q_hf.shape)
  # Per head, llama.cpp interleaves the two RoPE halves: row 2j is HF row j, 2j+1 is HF row j+Dh/2.
  half = c.head_dim // 2
  for h in range(c.num_heads):
    head = q_hf[h * c.head_dim : (h + 1) * c.head_dim]
    np.testing.assert_array_equal(x[h * c.head_dim : (h + 1) * c.head_dim : 2], head[:half])
    np.testing.assert_array_equal(x[h * c.head_dim + 1 : (h + 1) * c.head_dim : 2], head[half:])


def test_tokenizer_metadata_round_trips(tmp_path):
  """Both tokenizer kinds travel through the file: sentencepiece (llama) and byte-level BPE."""
  for kind in ("sentencepiece", "bpe"):
    folder = tmp_path / kind
    if kind == "sentencepiece":
      tok = tokenizers.load_tokenizer(testing.build_sentencepiece(folder, vocab_size=VOCAB))
    else:
      tok = tokenizers.load_tokenizer(testing.build_tokenizer_json(folder, vocab_size=300))
    model, params = testing.tiny("llama", rope_scaling=None, vocab_size=tok.vocab_size)
    file = gguf_write.save_gguf(folder / "m.gguf", model, params, tok)
    tok2 = tokenizers.load_tokenizer(str(file))
    for text in testing.TEXT[:5] + ["<|im_start|>user\nHi<|im_end|>\n  12 345\t\n"]:
      assert tok2.encode(text, add_bos=False) == tok.encode(text, add_bos=False), (kind, text)
    assert (tok2.bos_id, tok2.eos_id) == (tok.bos_id, tok.eos_id)


def _write_raw(path, arch="llama", drop=None, reshape=None, extra=None):
  """A hand-made GGUF (metadata of a tiny llama) with one tensor dropped, reshaped or added."""
  w = gguf.GGUFWriter(path, arch)
  for key, value in dict(
      context_length=64, embedding_length=32, block_count=1, feed_forward_length=48
  ).items():
    w.add_uint32(f"{arch}.{key}", value)
  w.add_uint32(f"{arch}.attention.head_count", 4)
  w.add_uint32(f"{arch}.attention.head_count_kv", 2)
  w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
  rng = np.random.default_rng(0)
  shapes = {
      "token_embd.weight": (VOCAB, 32),
      "output_norm.weight": (32,),
      "blk.0.attn_norm.weight": (32,),
      "blk.0.attn_q.weight": (32, 32),
      "blk.0.attn_k.weight": (16, 32),
      "blk.0.attn_v.weight": (16, 32),
      "blk.0.attn_output.weight": (32, 32),
      "blk.0.ffn_norm.weight": (32,),
      "blk.0.ffn_gate.weight": (48, 32),
      "blk.0.ffn_up.weight": (48, 32),
      "blk.0.ffn_down.weight": (32, 48),
      **(extra or {}),
  }
  for name, shape in shapes.items():
    if name != drop:
      shape = reshape[1] if reshape and reshape[0] == name else shape
      w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def test_hand_made_file_loads(tmp_path):
  model, params = gkd_jax.load_pretrained(_write_raw(tmp_path / "ok.gguf"))
  assert model.config.num_layers == 1 and model.config.tie_embeddings


@pytest.mark.parametrize(
    "case, words",
    [
        ("truncated", ["not a readable GGUF file", "bad.gguf"]),
        ("not_gguf", ["not a readable GGUF file", "bad.gguf"]),
        ("architecture", ["architecture 'qwen2'", "not supported"]),
        ("missing", ["missing", "model.layers.0.mlp.up_proj.weight"]),
        ("shape", ["blk.0.attn_k.weight", "shape", "[16, 32]"]),
        ("unknown", ["blk.0.attn_q.bias", "does not know"]),
    ],
)
def test_bad_file_is_one_clear_error(case, words, tmp_path):
  bad = tmp_path / "bad.gguf"
  if case == "truncated":
    data = _write_raw(tmp_path / "ok.gguf").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
  elif case == "not_gguf":
    bad.write_bytes(b"GGUF" + os.urandom(200))
  elif case == "architecture":
    _write_raw(bad, arch="qwen2")
  elif case == "missing":
    _write_raw(bad, drop="blk.0.ffn_up.weight")
  elif case == "shape":
    _write_raw(bad, reshape=("blk.0.attn_k.weight", (32, 32)))
  else:
    _write_raw(bad, extra={"blk.0.attn_q.bias": (32,)})
  with pytest.raises(ValueError) as info:
    gkd_jax.load_pretrained(bad)
  message = str(info.value)
  assert "\n" not in message
  for w in words:
    assert w in message, (w, message)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(layer_types=(SLIDING, FULL) * 3), ["layer_types"]),
        (dict(rope_local_theta=5e4), ["rope_local_theta"]),
        (dict(query_pre_attn_scalar=12.0), ["query_pre_attn_scalar"]),
    ],
)
def test_gguf_cannot_carry_refused(overrides, words, spm_tokenizer, tmp_path):
  model, params = testing.tiny("gemma3", **{**FAMILIES["gemma3"], **overrides})
  with pytest.raises(ValueError) as info:
    gguf_write.save_gguf(tmp_path / "m.gguf", model, params, spm_tokenizer)
  assert all(w in str(info.value) for w in words)
  assert not list(tmp_path.iterdir())  # nothing written


def test_convert_cli_errors_exit_2(tmp_path):
  bad = _write_raw(tmp_path / "bad.gguf", arch="qwen2")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "gkd_jax.main", "convert", f"--gguf={bad}", f"--out={tmp_path}/o"]
  done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
  assert done.returncode == 2, done.stderr
  lines = [l for l in done.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith("gkd-jax convert: error:") and "qwen2" in lines[-1], done.stderr
  assert not (tmp_path / "o").exists()


def test_rope_permute_inverts():
  w = np.random.default_rng(1).standard_normal((3 * 8, 5))
  back = gguf_in.rope_permute(gguf_in.rope_permute(w, 3), 3, inverse=True)
  np.testing.assert_array_equal(back, w)
