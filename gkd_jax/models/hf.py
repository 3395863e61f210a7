"""HuggingFace checkpoint folders in and out: config.json + *.safetensors (sharded or not).

GGUF files are read through the same validated path (`params_from_tensors`; see models/gguf.py).

  model, params = load_pretrained("path/to/Qwen3-0.6B", dtype=jnp.bfloat16, shardings=...)
  save_pretrained("out/student", model, params)      # opens in transformers unchanged

Loading streams tensor by tensor (`safetensors.safe_open`): one tensor at a time is read, laid out
for our params tree, cast, and placed with `jax.device_put(x, sharding)`; the checkpoint is never
held twice in host memory. Everything is validated before any tensor is read: every expected
tensor present, no unexpected one, HF shapes right, dtypes floating point. Any violation is one
ValueError (FileNotFoundError for missing files) that names the tensor, field or file; there is no
fallback to random weights.

HF nn.Linear weights are [out, in]; ours are input-major with split heads, e.g. q_proj.weight
[H*Dh, D] <-> q [D, H, Dh] and o_proj.weight [D, H*Dh] <-> o [H, Dh, D].
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from gkd_jax.models import stacking
from gkd_jax.models.config import ModelConfig
from gkd_jax.models.hf_config import config_from_hf, config_to_hf

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
# Tensors some checkpoints carry that hold nothing we need (recomputed RoPE tables).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# Multimodal Gemma 3 (model_type "gemma3"): we load its language model and skip the vision tower.
_MULTIMODAL_PREFIXES = (
    ("language_model.model.", "model."),
    ("model.language_model.", "model."),
    ("language_model.lm_head.", "lm_head."),
)
_VISION_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)

# Our parameter paths (api.py's params layout), by role; layer roles sit under ("layers", i).
_NORMS = ("final_norm", "attn_norm", "post_attn_norm", "mlp_norm", "post_mlp_norm")
_NAMES = dict(
    embed=("embed",),
    lm_head=("lm_head",),
    **{norm: (norm, "scale") for norm in _NORMS},
    **{role: ("attn", role) for role in ("q", "k", "v", "o", "q_bias", "k_bias", "v_bias")},
    q_norm=("attn", "q_norm", "scale"),
    k_norm=("attn", "k_norm", "scale"),
    **{role: ("mlp", role) for role in ("gate", "up", "down")},
)


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One HF tensor and where it lives in our params tree."""

  hf_name: str
  path: tuple  # keys into the params dict (layer indices are ints)
  hf_shape: tuple[int, ...]
  shape: tuple[int, ...]
  transpose: bool = False  # an nn.Linear weight [out, in]; ours is [in, out] (heads split)

  def to_ours(self, x: np.ndarray) -> np.ndarray:
    """HF layout -> ours (a view: transpose, then split heads)."""
    return (x.T if self.transpose else x).reshape(self.shape)

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    if self.transpose:
      x = x.reshape(self.hf_shape[::-1]).T
    return np.ascontiguousarray(x.reshape(self.hf_shape))


def tensor_plan(config: ModelConfig) -> list[_Entry]:
  """Every HF tensor of a checkpoint for `config`, in checkpoint order, with our path and shape."""
  n = _NAMES
  D, F, V = config.embed_dim, config.mlp_dim, config.vocab_size
  H, K, Dh = config.num_heads, config.num_kv_heads, config.head_dim
  gemma = config.model_type.startswith("gemma")
  out = [_Entry("model.embed_tokens.weight", n["embed"], (V, D), (V, D))]
  for i in range(config.num_layers):
    pre, ours = f"model.layers.{i}.", lambda role: ("layers", i) + n[role]
    e = [
        (pre + "input_layernorm.weight", "attn_norm", (D,), (D,)),
        (pre + "self_attn.q_proj.weight", "q", (H * Dh, D), (D, H, Dh)),
        (pre + "self_attn.k_proj.weight", "k", (K * Dh, D), (D, K, Dh)),
        (pre + "self_attn.v_proj.weight", "v", (K * Dh, D), (D, K, Dh)),
        (pre + "self_attn.o_proj.weight", "o", (D, H * Dh), (H, Dh, D)),
    ]
    if config.qkv_bias:
      e += [
          (pre + "self_attn.q_proj.bias", "q_bias", (H * Dh,), (H, Dh)),
          (pre + "self_attn.k_proj.bias", "k_bias", (K * Dh,), (K, Dh)),
          (pre + "self_attn.v_proj.bias", "v_bias", (K * Dh,), (K, Dh)),
      ]
    if config.qk_norm:
      e += [
          (pre + "self_attn.q_norm.weight", "q_norm", (Dh,), (Dh,)),
          (pre + "self_attn.k_norm.weight", "k_norm", (Dh,), (Dh,)),
      ]
    if gemma:  # Gemma names: post_attention_layernorm is the *post*-attention norm
      if config.post_attn_norm:
        e.append((pre + "post_attention_layernorm.weight", "post_attn_norm", (D,), (D,)))
      e.append((pre + "pre_feedforward_layernorm.weight", "mlp_norm", (D,), (D,)))
      if config.post_mlp_norm:
        e.append((pre + "post_feedforward_layernorm.weight", "post_mlp_norm", (D,), (D,)))
    else:  # Llama/Qwen names: post_attention_layernorm is the pre-MLP norm
      e.append((pre + "post_attention_layernorm.weight", "mlp_norm", (D,), (D,)))
    e += [
        (pre + "mlp.gate_proj.weight", "gate", (F, D), (D, F)),
        (pre + "mlp.up_proj.weight", "up", (F, D), (D, F)),
        (pre + "mlp.down_proj.weight", "down", (D, F), (F, D)),
    ]
    out += [_Entry(name, ours(role), hf, mine, len(hf) == 2) for name, role, hf, mine in e]
  out.append(_Entry("model.norm.weight", n["final_norm"], (D,), (D,)))
  if not config.tie_embeddings:
    out.append(_Entry("lm_head.weight", n["lm_head"], (V, D), (D, V), True))
  return out


def _model_api():
  from gkd_jax.models import api  # the decoder; imported only when a model is built

  return api


def _plan_for(model) -> list[_Entry]:
  """The plan for `model`, checked leaf by leaf against its params tree (shapes included)."""
  shapes = _model_api().param_shapes(model)
  plan = tensor_plan(model.config)
  leaves = {
      tuple(_key(k) for k in p): tuple(x.shape)
      for p, x in jax.tree_util.tree_leaves_with_path(shapes)
  }
  mine = {e.path: e.shape for e in plan}
  if leaves != mine:
    shapes_differ = [(p, leaves[p], mine[p]) for p in leaves if mine.get(p, leaves[p]) != leaves[p]]
    raise RuntimeError(
        f"HF tensor map and decoder params disagree: only in decoder "
        f"{sorted(set(leaves) - set(mine), key=str)[:5]}, only in map "
        f"{sorted(set(mine) - set(leaves), key=str)[:5]}, shape differences "
        f"{shapes_differ[:5]}"
    )
  return plan


def _key(k):
  return getattr(k, "key", getattr(k, "idx", k))


# ----------------------------------------------------------------------------------------- files


def read_hf_config(path: Union[str, os.PathLike]) -> dict[str, Any]:
  f = Path(path) / CONFIG
  if not f.is_file():
    raise FileNotFoundError(f"no {CONFIG} in checkpoint folder {str(path)!r}")
  with open(f) as fh:
    try:
      return json.load(fh)
    except json.JSONDecodeError as e:
      raise ValueError(f"{f}: not valid JSON ({e})") from None


def _weight_files(path: Path) -> dict[str, Path]:
  """HF tensor name -> the safetensors file that holds it (from the index, or by listing)."""
  index = path / INDEX
  if index.is_file():
    try:
      with open(index) as fh:
        weight_map = json.load(fh).get("weight_map")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
      raise ValueError(f"{index}: not a safetensors index ({e})") from None
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index}: no 'weight_map' object")
    files = {name: path / shard for name, shard in weight_map.items()}
    for name, shard in weight_map.items():  # the index may only name files of the folder itself
      if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", ".."):
        raise ValueError(
            f"{index}: weight_map[{name!r}]={shard!r} is not a file name in "
            "the checkpoint folder"
        )
    for shard in sorted(set(files.values())):
      if not shard.is_file():
        first = next(n for n, s in files.items() if s == shard)
        raise FileNotFoundError(
            f"{index} names shard {shard.name!r} (holding e.g. {first!r}) "
            f"but {shard} does not exist"
        )
    return files
  shards = sorted(path.glob("*.safetensors"))
  if not shards:
    raise FileNotFoundError(
        f"no {WEIGHTS}, {INDEX} or *.safetensors in {str(path)!r} "
        "(only safetensors checkpoints are supported)"
    )
  files = {}
  for shard in shards:
    with _safe_open(shard) as f:
      for name in f.keys():
        if name in files:
          raise ValueError(f"tensor {name!r} is in both {files[name].name} and {shard.name}")
        files[name] = shard
  return files


def _safe_open(file: Path):
  """safetensors.safe_open, with a damaged file reported as one ValueError naming it."""
  from safetensors import SafetensorError, safe_open

  try:
    return safe_open(file, framework="np")
  except (SafetensorError, OSError) as e:
    raise ValueError(f"{file}: not a readable safetensors file ({e})") from None


def _canonical(name: str, multimodal: bool) -> Optional[str]:
  """Checkpoint name -> our HF name, or None for tensors we deliberately skip."""
  if name.endswith(_IGNORED_SUFFIXES):
    return None
  if multimodal:
    if name.startswith(_VISION_PREFIXES):
      return None
    for old, new in _MULTIMODAL_PREFIXES:
      if name.startswith(old):
        return new + name[len(old) :]
  return name


# ------------------------------------------------------------------------------------------ load

ShardingsArg = Union[None, Any, Callable[[tuple, jax.ShapeDtypeStruct], Any]]


@dataclasses.dataclass(frozen=True)
class TensorRef:
  """One checkpoint tensor in HF layout, described and read on demand (any file format).

  `meta()` -> (shape, dtype name, is floating point); `read()` -> the array in HF layout; `where`
  names it in errors (file and tensor name as the file spells it).
  """

  where: str
  meta: Callable[[], tuple[tuple[int, ...], str, bool]]
  read: Callable[[], np.ndarray]


def params_from_tensors(
    tensors: dict[str, TensorRef], model, dtype, shardings: ShardingsArg, source: str
) -> dict:
  """The params tree of `model` from HF-named tensors: every expected tensor present, no unexpected
  one, HF shapes right, dtypes floating point (all checked before the first tensor is read), then
  read one at a time, cast, and placed. `source` names the checkpoint in errors."""
  plan = _plan_for(model)
  expected = {e.hf_name for e in plan}
  tied_head = model.config.tie_embeddings and "lm_head.weight" in tensors
  missing = sorted(expected - set(tensors))
  if missing:
    raise ValueError(
        f"checkpoint {source!r} is missing {len(missing)} tensor(s) that "
        f"{model.config.model_type} needs: {', '.join(missing[:8])}"
        + (" ..." if len(missing) > 8 else "")
    )
  extra = sorted(set(tensors) - expected - ({"lm_head.weight"} if tied_head else set()))
  if extra:
    raise ValueError(
        f"checkpoint {source!r} has {len(extra)} unexpected tensor(s) for this "
        f"config: {', '.join(extra[:8])}" + (" ..." if len(extra) > 8 else "")
    )
  out_dtype = np.dtype(jnp.dtype(dtype))
  if not jnp.issubdtype(out_dtype, jnp.floating):
    raise ValueError(f"dtype={out_dtype} must be a floating-point dtype")
  checks = [(e.hf_name, e.hf_shape) for e in plan]
  if tied_head:
    checks.append(("lm_head.weight", plan[0].hf_shape))
  for name, hf_shape in checks:
    shape, type_name, is_float = tensors[name].meta()
    if shape != hf_shape:
      raise ValueError(
          f"tensor {name!r} has shape {list(shape)}, expected "
          f"{list(hf_shape)} for this config ({tensors[name].where})"
      )
    if not is_float:
      raise ValueError(
          f"tensor {name!r} has dtype {type_name}, which cannot be cast to "
          f"{out_dtype} (expected a float tensor; {tensors[name].where})"
      )
  if tied_head:  # tolerated only when it is the embedding itself (as some releases store it)
    head, emb = tensors["lm_head.weight"], tensors[plan[0].hf_name]
    if not np.array_equal(head.read(), emb.read()):
      raise ValueError(
          f"tensor {head.where!r} differs from {emb.where!r} but tie_word_embeddings is "
          "true in config.json"
      )
  params: dict = {}
  for e in plan:
    x = e.to_ours(tensors[e.hf_name].read()).astype(out_dtype, copy=False)
    _set(params, e.path, _place(x, e.path, shardings))
    del x
  return params


def read_params(
    path, model, dtype=jnp.float32, shardings: ShardingsArg = None, multimodal: bool = False
) -> dict:
  """The params tree of `model` from the safetensors files in `path` (validated, streamed).

  shardings: None (default device), a pytree of `jax.sharding.Sharding` with the params' structure,
  or a callable (path_tuple, ShapeDtypeStruct) -> Sharding.
  """
  if is_gguf(path):
    from gkd_jax.models import gguf  # pylint: disable=import-outside-toplevel

    return gguf.read_params(path, model, dtype, shardings)
  path = Path(path)
  with contextlib.ExitStack() as stack:
    handles = {}

    def open_(name, file):
      if file not in handles:
        handles[file] = stack.enter_context(_safe_open(file))
      if name not in handles[file].keys():
        raise ValueError(f"tensor {name!r} is listed for {file.name} but that file lacks it")
      return handles[file]

    def ref(name, file):
      def meta():
        s = open_(name, file).get_slice(name)
        return tuple(s.get_shape()), s.get_dtype(), s.get_dtype() in _FLOAT_DTYPES

      return TensorRef(f"{name} in {file.name}", meta, lambda: open_(name, file).get_tensor(name))

    tensors = {}
    for name, file in _weight_files(path).items():
      canon = _canonical(name, multimodal)
      if canon is not None:
        tensors[canon] = ref(name, file)
    return params_from_tensors(tensors, model, dtype, shardings, str(path))


def _place(x: np.ndarray, path: tuple, shardings: ShardingsArg):
  if shardings is None:
    return jax.device_put(x)
  if isinstance(shardings, jax.sharding.Sharding):
    sharding = shardings
  elif callable(shardings):
    sharding = shardings(path, jax.ShapeDtypeStruct(x.shape, x.dtype))
  else:
    sharding = _get(shardings, path)
  return jax.device_put(x, sharding)


def _set(tree: dict, path: tuple, value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _get(tree, path: tuple):
  for k in path:
    tree = tree[k]
  return tree


def is_gguf(path) -> bool:
  """Whether `path` names a GGUF file (by its suffix) rather than a checkpoint folder."""
  return str(path).endswith(".gguf") and not os.path.isdir(path)


def read_model(path, dtype=jnp.float32) -> tuple[Any, bool]:
  """The `Model` the folder's config.json (or the GGUF file's metadata) describes, and whether the
  checkpoint is a multimodal Gemma 3 whose text weights `read_params(multimodal=True)` picks."""
  if is_gguf(path):
    from gkd_jax.models import gguf  # pylint: disable=import-outside-toplevel

    return _model_api().build(config_from_hf(gguf.read_config(path)), dtype), False
  hf = read_hf_config(path)
  return _model_api().build(config_from_hf(hf), dtype), hf.get("model_type") == "gemma3"


def load_pretrained(
    path, dtype=jnp.float32, shardings: ShardingsArg = None, scan_layers: bool = False
):
  """(model, params) from a HuggingFace checkpoint folder or a `.gguf` file (see models/gguf.py).

  scan_layers: a `scan_layers` model and its stacked params (read per layer, then stacked leaf by
  leaf; `shardings` describe the stacked form, see models/stacking.py)."""
  model, multimodal = read_model(path, dtype)
  if not scan_layers:
    return model, read_params(path, model, dtype, shardings, multimodal=multimodal)
  per_layer = stacking.per_layer_shardings(shardings, model.config.num_layers)
  params = read_params(path, model, dtype, per_layer, multimodal=multimodal)
  return dataclasses.replace(model, scan_layers=True), stacking.stack_placed(params, shardings)


# ------------------------------------------------------------------------------------------ save


def _to_host(x) -> np.ndarray:
  if isinstance(x, stacking.LayerSlice):
    x = x.materialize()
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


def save_pretrained(path, model, params, max_shard_bytes: int = 5 * 2**30) -> None:
  """Write config.json, generation_config.json and model.safetensors (or shards + index).

  The files are what transformers itself writes for the family (5.x config dialect, torch
  tensor names and layouts, tied embeddings without lm_head.weight); tensors keep the params'
  dtype. Shards are built one at a time, so host memory holds at most one shard. On a
  multi-process run every process must call this (arrays are gathered); process 0 writes.
  Stacked params (a `scan_layers` model) are written per layer, one layer's slice at a time.
  """
  from safetensors.numpy import save_file

  plan = _plan_for(dataclasses.replace(model, scan_layers=False))
  path = Path(path)
  if _model_api().is_stacked(params):
    get = lambda p: (
        stacking.LayerSlice(_get(params["layers"], p[2:]), p[1])
        if p[0] == "layers"
        else _get(params, p)
    )
  else:
    get = functools.partial(_get, params)
  leaves = [get(e.path) for e in plan]
  dtype_name = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}.get(
      str(jnp.dtype(leaves[0].dtype)), "float32"
  )
  hf = config_to_hf(model.config, dtype=dtype_name)  # validates before anything is written
  writer = jax.process_index() == 0
  if writer:
    path.mkdir(parents=True, exist_ok=True)
    _write_json(path / CONFIG, hf)
    gen = {
        k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf.get(k) is not None
    }
    _write_json(path / GENERATION_CONFIG, gen)
  shards, current, size = [], [], 0
  for e, x in zip(plan, leaves):
    nbytes = int(np.prod(e.shape)) * jnp.dtype(x.dtype).itemsize
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append(e)
    size += nbytes
  shards.append(current)
  names = (
      [WEIGHTS]
      if len(shards) == 1
      else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  )
  by_path = {e.path: x for e, x in zip(plan, leaves)}
  weight_map, total = {}, 0
  for name, shard in zip(names, shards):
    tensors = {e.hf_name: e.to_hf(_to_host(by_path[e.path])) for e in shard}
    total += sum(t.nbytes for t in tensors.values())
    weight_map.update({k: name for k in tensors})
    if writer:
      save_file(tensors, path / name, metadata={"format": "pt"})
    del tensors
  if writer:
    index = path / INDEX
    if len(shards) > 1:
      _write_json(index, {"metadata": {"total_size": total}, "weight_map": weight_map})
    elif index.exists():  # a stale index from an earlier, sharded save would shadow the new file
      index.unlink()
    for old in path.glob("model*.safetensors"):  # stale shards of an earlier save (as transformers)
      if old.name not in names and re.fullmatch(
          r"model-\d{5}-of-\d{5}\.safetensors|" r"model\.safetensors", old.name
      ):
        old.unlink()


def _write_json(file: Path, obj) -> None:
  tmp = file.with_suffix(file.suffix + ".tmp")
  with open(tmp, "w") as fh:
    json.dump(obj, fh, indent=2, sort_keys=True)
    fh.write("\n")
  os.replace(tmp, file)
