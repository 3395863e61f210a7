"""The small Llama-style ModelConfig the bundled tasks' teachers and students are built from
(imported by the asset build scripts beside this file)."""

from gkd_jax import models


def model_config(tokenizer, layers, dim, heads, kv_heads):
  return models.ModelConfig(
      model_type="llama",
      vocab_size=tokenizer.vocab_size,
      num_layers=layers,
      embed_dim=dim,
      mlp_dim=3 * dim,
      num_heads=heads,
      num_kv_heads=kv_heads,
      head_dim=dim // heads,
      tie_embeddings=True,
      rope_theta=10000.0,
      max_position_embeddings=128,
      norm_eps=1e-6,
      bos_id=tokenizer.bos_id,
      eos_id=tokenizer.eos_id,
      pad_id=tokenizer.pad_id,
  )
