"""Model configs, the NNX decoder and HuggingFace checkpoint I/O.

CONTRACT (binding for everyone working on gkd_jax/models, the HF I/O and the trainer):

## Model API contract (shared by the model-core helper, the HF-I/O helper and the trainer)

`gkd_jax/models/config.py` (already committed; read it) defines the frozen, hashable `ModelConfig` and
`RopeScaling`. Do not rename its fields; you may ADD fields if a family truly needs one (tell the lead).

Functions (in `gkd_jax/models/`, re-exported from `gkd_jax/models/__init__.py`):
- `build(config) -> Model`: cheap, no weights. `Model` carries `.config` (and whatever NNX graph object it
  needs). It must be usable as a closure constant / static argument around `jax.jit`.
- `init(config, rng, dtype=jnp.float32) -> (Model, params)`: random init (for tests and from-scratch students).
- `param_shapes(config, dtype=jnp.float32)`: pytree of `jax.ShapeDtypeStruct`, same structure as params.
- `logical_axes(config)`: pytree with the same structure as params whose leaves are tuples of logical axis
  names (see table), used by the trainer to shard.
- `unembedding(model, params) -> [D, V]`: embedding.T when tied, else lm_head kernel.
- Public (re-exported at `gkd_jax.score` / `gkd_jax.sample`):
  `score(model, params, tokens_BxT, mask_BxT, return_hidden=False)` -> logits `[B,T,V]` float32 (final-logit
  soft-cap applied) or final-norm hidden states `[B,T,D]`. Positions are `cumsum(mask)-1` so left- or
  right-padded rows both work; masked positions are never attended to. Differentiable w.r.t. params.
  `sample(model, params, prompt_tokens_BxP, prompt_mask_BxP, rng, *, max_new_tokens, temperature=1.0, top_k=0,
  top_p=1.0, eos_id=None) -> SampleOutput(tokens [B,N], mask [B,N], logprobs [B,N])`, prompts LEFT-padded
  (mask 0 on the left); mask is 1 up to and including the first EOS, 0 after; logprobs are of the chosen token
  under the distribution actually sampled from (temperature, top-k, top-p applied; for temperature 0 under
  softmax(logits)); tokens after EOS are `pad_id`. Must be callable under `jax.jit` (static: model,
  max_new_tokens, top_k, eos_id; temperature/top_p may be static too).

`params` is a plain nested dict (the pure-dict form of the NNX Param state), layers as a dict keyed by
int 0..L-1, leaf names exactly:
```
embedder/embedding                 [V, D]       ('vocab', 'embed')
layers/{i}/pre_attn_norm/scale     [D]          ('embed',)
layers/{i}/attn/q_proj/kernel      [D, H, Dh]   ('embed', 'heads', 'head_dim')
layers/{i}/attn/q_proj/bias        [H, Dh]      ('heads', 'head_dim')          (qkv_bias only)
layers/{i}/attn/k_proj/kernel      [D, K, Dh]   ('embed', 'kv_heads', 'head_dim')
layers/{i}/attn/k_proj/bias        [K, Dh]      ('kv_heads', 'head_dim')       (qkv_bias only)
layers/{i}/attn/v_proj/kernel      [D, K, Dh]   ('embed', 'kv_heads', 'head_dim')
layers/{i}/attn/v_proj/bias        [K, Dh]      ('kv_heads', 'head_dim')       (qkv_bias only)
layers/{i}/attn/o_proj/kernel      [H, Dh, D]   ('heads', 'head_dim', 'embed')
layers/{i}/attn/q_norm/scale       [Dh]         ('head_dim',)                  (qk_norm only)
layers/{i}/attn/k_norm/scale       [Dh]         ('head_dim',)                  (qk_norm only)
layers/{i}/post_attn_norm/scale    [D]          ('embed',)                     (post_attn_norm only)
layers/{i}/pre_mlp_norm/scale      [D]          ('embed',)
layers/{i}/mlp/gate_proj/kernel    [D, F]       ('embed', 'mlp')
layers/{i}/mlp/up_proj/kernel      [D, F]       ('embed', 'mlp')
layers/{i}/mlp/down_proj/kernel    [F, D]       ('mlp', 'embed')
layers/{i}/post_mlp_norm/scale     [D]          ('embed',)                     (post_mlp_norm only)
final_norm/scale                   [D]          ('embed',)
lm_head/kernel                     [D, V]       ('embed', 'vocab')             (untied only)
```
Norm scales are stored exactly as HF stores them (Gemma's are zero-centred; forward uses `x*(1+w)` when
`config.norm_scale_plus_one`). HF Linear weights are [out, in]: e.g. q_proj.weight [H*Dh, D] maps to our
kernel as `w.T.reshape(D, H, Dh)`; o_proj.weight [D, H*Dh] -> `w.T.reshape(H, Dh, D)`.
Family semantics (match transformers exactly): Gemma 2 layer i is sliding when i is even ((i+1)%2 != 0);
Gemma 3 layer i is sliding unless (i+1) % sliding_window_pattern == 0; Gemma 3 sliding layers use
rope_local_theta with no scaling, global layers use rope_theta with rope_scaling; Llama 3 uses the `llama3`
rope scaling; attention scale is `query_pre_attn_scalar**-0.5` when set; embeddings are multiplied by
sqrt(D) (cast to the param dtype, as HF does) when scale_embeddings; GeGLU uses tanh-approx GELU.

Repo rules for helpers working in parallel in this tree: see /tmp/common.md (read it now).
"""

from gkd_jax.models.config import FULL, SLIDING, ModelConfig, RopeScaling
