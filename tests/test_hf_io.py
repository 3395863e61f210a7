"""save_pretrained / load_pretrained: exact round trips, sharded files, placement, and bad input.

Bad checkpoints are made by editing copies of the committed transformers fixtures
(tests/fixtures/hf) with safetensors' own numpy API; every one must give one clear error that
names the tensor, field or file, never a model with random weights.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from safetensors.numpy import load_file, save_file

import gkd_jax
from gkd_jax import models, testing
from gkd_jax.models import hf
from gkd_jax.models.hf_config import config_from_hf

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
TINY = ("tiny_llama", "tiny_gemma2", "tiny_gemma3", "tiny_qwen2", "tiny_qwen3")


def _assert_same_tree(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape, path
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


@pytest.mark.parametrize("name", TINY)
def test_round_trip_is_exact(name, tmp_path):
  cfg = models.get_preset(name)
  model = models.build(cfg)
  params = testing.normal_params(model, seed=len(name))
  gkd_jax.save_pretrained(tmp_path, model, params)
  assert sorted(os.listdir(tmp_path)) == [
      "config.json",
      "generation_config.json",
      "model.safetensors",
  ]
  model2, params2 = gkd_jax.load_pretrained(tmp_path)
  assert model2.config == cfg
  _assert_same_tree(params, params2)
  # Tied embeddings are saved the way transformers saves them: no lm_head.weight.
  names = set(load_file(tmp_path / "model.safetensors"))
  assert ("lm_head.weight" in names) == (not cfg.tie_embeddings)


def test_bf16_and_sharded_round_trip(tmp_path):
  model = models.build(models.get_preset("tiny_qwen3"), jnp.bfloat16)
  params = testing.normal_params(model, seed=3)
  hf.save_pretrained(tmp_path, model, params, max_shard_bytes=20_000)
  files = sorted(os.listdir(tmp_path))
  shards = [f for f in files if f.endswith(".safetensors")]
  assert len(shards) > 2 and "model.safetensors" not in files
  with open(tmp_path / hf.INDEX) as f:
    index = json.load(f)
  assert set(index["weight_map"].values()) == set(shards)
  assert index["metadata"]["total_size"] == sum(x.size * 2 for x in jax.tree.leaves(params))
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["dtype"] == "bfloat16"
  model2, params2 = gkd_jax.load_pretrained(tmp_path, dtype=jnp.bfloat16)
  _assert_same_tree(params, params2)
  # Casting on load: bf16 -> f32 is exact.
  _, params32 = gkd_jax.load_pretrained(tmp_path, dtype=jnp.float32)
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(params32)):
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y))
  # Re-saving unsharded removes the now-stale index (it would shadow model.safetensors).
  hf.save_pretrained(tmp_path, model2, params2)
  assert not (tmp_path / hf.INDEX).exists()
  _assert_same_tree(params, gkd_jax.load_pretrained(tmp_path, dtype=jnp.bfloat16)[1])


def test_fixture_checkpoint_round_trips_to_identical_files(tmp_path):
  """transformers' file -> ours -> saved again: every tensor bit-identical to transformers'."""
  src = os.path.join(FIXTURES, "gemma3_text")
  model, params = gkd_jax.load_pretrained(src)
  gkd_jax.save_pretrained(tmp_path, model, params)
  a = load_file(os.path.join(src, "model.safetensors"))
  b = load_file(tmp_path / "model.safetensors")
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  with open(tmp_path / "config.json") as f:
    assert config_from_hf(json.load(f)) == model.config


def test_load_places_each_tensor_with_given_shardings(tmp_path):
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
  path = os.path.join(FIXTURES, "llama")
  _, ref = gkd_jax.load_pretrained(path)

  def sharding(path, shape):  # shard the leading axis over "model" when it divides
    spec = PartitionSpec("model") if shape.shape[0] % 4 == 0 else PartitionSpec()
    return NamedSharding(mesh, spec)

  _, params = gkd_jax.load_pretrained(path, shardings=sharding)
  _assert_same_tree(ref, params)
  assert params["embed"].sharding == NamedSharding(mesh, PartitionSpec("model"))
  assert len(params["embed"].addressable_shards) == 8
  tree = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), ref)
  _, params = gkd_jax.load_pretrained(path, shardings=tree)
  assert params["layers"][0]["attn"]["q"].sharding == NamedSharding(mesh, PartitionSpec())
  # Arrays spread over the mesh save to the same files.
  model, sharded = gkd_jax.load_pretrained(path, shardings=sharding)
  gkd_jax.save_pretrained(tmp_path, model, sharded)
  a = load_file(os.path.join(path, "model.safetensors"))
  b = load_file(tmp_path / "model.safetensors")
  assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_load_streams_one_tensor_at_a_time(tmp_path):
  """Host memory while loading stays near one tensor, not the checkpoint size."""
  import tracemalloc

  cfg = models.get_preset("tiny_llama").replace(
      vocab_size=2048,
      embed_dim=128,
      mlp_dim=512,
      num_layers=4,
      num_heads=4,
      num_kv_heads=2,
      head_dim=64,
      tie_embeddings=False,
      layer_types=(),
  )
  model = models.build(cfg)
  hf.save_pretrained(tmp_path, model, testing.normal_params(model, 5))
  total = os.path.getsize(tmp_path / "model.safetensors")
  largest = cfg.vocab_size * cfg.embed_dim * 4
  tracemalloc.start()
  try:
    params = hf.read_params(tmp_path, model)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert sum(x.nbytes for x in jax.tree.leaves(params)) > 6 * largest > total / 2
  assert peak < 3 * largest, (peak, largest, total)  # measured: about 2x (buffer + placed array)


def test_multimodal_gemma3_loads_its_language_model(tmp_path):
  """A Gemma 3 4B+-style folder (model_type gemma3, text_config, language_model.* names)."""
  src = os.path.join(FIXTURES, "gemma3_text")
  with open(os.path.join(src, "config.v4.json")) as f:
    text = json.load(f)
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"model_type": "gemma3", "text_config": text, "vision_config": {}}, f)
  text_tensors = load_file(os.path.join(src, "model.safetensors"))
  tensors = {"language_model." + k: v for k, v in text_tensors.items()}
  tensors["vision_tower.vision_model.post_layernorm.weight"] = np.ones(4, np.float32)
  tensors["multi_modal_projector.mm_input_projection_weight"] = np.ones((4, 4), np.float32)
  save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  model, params = gkd_jax.load_pretrained(tmp_path)
  ref_model, ref = gkd_jax.load_pretrained(src)
  assert model.config == ref_model.config
  _assert_same_tree(ref, params)


# ------------------------------------------------------------------------------------ bad input


def _copy(name, tmp_path):
  dst = tmp_path / name
  shutil.copytree(os.path.join(FIXTURES, name), dst)
  return dst


def _edit_tensors(folder, fn):
  f = folder / "model.safetensors"
  tensors = load_file(f)
  fn(tensors)
  save_file(tensors, f, metadata={"format": "pt"})


def _edit_config(folder, fn):
  with open(folder / "config.json") as f:
    d = json.load(f)
  fn(d)
  with open(folder / "config.json", "w") as f:
    json.dump(d, f)


Q0 = "model.layers.0.self_attn.q_proj.weight"


@pytest.mark.parametrize(
    "case, exc, words",
    [
        ("unknown_model_type", ValueError, ["model_type", "gpt2", "qwen3"]),
        ("unsupported_rope", ValueError, ["rope_scaling", "yarn"]),
        ("attention_bias", ValueError, ["attention_bias"]),
        ("bad_activation", ValueError, ["hidden_act", "relu"]),
        ("missing_tensor", ValueError, ["missing", Q0]),
        ("extra_tensor", ValueError, ["unexpected", "model.layers.0.self_attn.q_proj.bias"]),
        ("wrong_shape", ValueError, [Q0, "shape", "[64, 32]"]),
        ("int_tensor", ValueError, [Q0, "I32", "float"]),
        ("missing_config", FileNotFoundError, ["config.json"]),
        ("no_weights", FileNotFoundError, ["safetensors"]),
        ("index_missing_shard", FileNotFoundError, ["model-00002-of-00002.safetensors"]),
        ("index_wrong_shard", ValueError, ["model.norm.weight", "model.safetensors"]),
        ("tied_head_differs", ValueError, ["lm_head.weight", "tie_word_embeddings"]),
    ],
)
def test_bad_checkpoint_gives_one_clear_error(case, exc, words, tmp_path):
  folder = _copy("llama", tmp_path)
  if case == "unknown_model_type":
    _edit_config(folder, lambda d: d.update(model_type="gpt2"))
  elif case == "unsupported_rope":

    def fn(d):
      d.pop("rope_parameters")
      d.update(rope_theta=1e4, rope_scaling={"rope_type": "yarn", "factor": 4.0})

    _edit_config(folder, fn)
  elif case == "attention_bias":
    _edit_config(folder, lambda d: d.update(attention_bias=True))
  elif case == "bad_activation":
    _edit_config(folder, lambda d: d.update(hidden_act="relu"))
  elif case == "missing_tensor":
    _edit_tensors(folder, lambda t: t.pop(Q0))
  elif case == "extra_tensor":
    _edit_tensors(
        folder,
        lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.ones(32, np.float32)}),
    )
  elif case == "wrong_shape":
    _edit_tensors(folder, lambda t: t.update({Q0: np.ones((64, 32), np.float32)}))
  elif case == "int_tensor":
    _edit_tensors(folder, lambda t: t.update({Q0: t[Q0].astype(np.int32)}))
  elif case == "missing_config":
    os.remove(folder / "config.json")
  elif case == "no_weights":
    os.remove(folder / "model.safetensors")
  elif case in ("index_missing_shard", "index_wrong_shard"):
    names = list(load_file(folder / "model.safetensors"))
    shard = "model-00002-of-00002.safetensors" if case == "index_missing_shard" else None
    weight_map = {n: "model.safetensors" for n in names}
    if shard:
      weight_map[names[-1]] = shard
    else:  # the index claims a tensor the file does not hold
      _edit_tensors(folder, lambda t: t.pop("model.norm.weight"))
      weight_map["model.norm.weight"] = "model.safetensors"
    with open(folder / hf.INDEX, "w") as f:
      json.dump({"metadata": {}, "weight_map": weight_map}, f)
  elif case == "tied_head_differs":
    _edit_config(folder, lambda d: d.update(tie_word_embeddings=True))
  with pytest.raises(exc) as info:
    gkd_jax.load_pretrained(folder)
  for w in words:
    assert w in str(info.value), (w, str(info.value))


def test_tied_checkpoint_that_also_stores_its_head_loads(tmp_path):
  """Some tied releases (e.g. Qwen3-1.7B) also store lm_head.weight = the embedding: accepted."""
  folder = _copy("qwen2", tmp_path)  # tied
  _, ref = gkd_jax.load_pretrained(folder)
  _edit_tensors(folder, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"]}))
  _, params = gkd_jax.load_pretrained(folder)
  _assert_same_tree(ref, params)


def test_save_refuses_what_transformers_cannot_represent(tmp_path):
  cfg = models.get_preset("tiny_llama").replace(attn_logit_softcap=10.0)
  model = models.build(cfg)
  with pytest.raises(ValueError, match="soft-caps"):
    gkd_jax.save_pretrained(tmp_path, model, testing.normal_params(model, 0))
  assert not os.listdir(tmp_path)  # nothing half-written
