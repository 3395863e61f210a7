import pytest

from gkd_jax.models import FULL, SLIDING, ModelConfig


def _cfg(**kw):
  base = dict(
      model_type="llama",
      vocab_size=64,
      num_layers=2,
      embed_dim=32,
      mlp_dim=64,
      num_heads=4,
      num_kv_heads=2,
      head_dim=8,
  )
  base.update(kw)
  return ModelConfig(**base)


def test_default_layer_types_are_full_and_config_is_hashable():
  cfg = _cfg()
  assert cfg.layer_types == (FULL, FULL)
  assert hash(cfg) == hash(_cfg())


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(num_heads=3), "num_heads"),
        (dict(activation="relu"), "activation"),
        (dict(layer_types=(SLIDING, FULL)), "sliding_window"),
        (dict(layer_types=(FULL,)), "layer_types"),
        (dict(vocab_size=0), "vocab_size"),
    ],
)
def test_bad_config_names_the_field(kw, field):
  with pytest.raises(ValueError, match=field):
    _cfg(**kw)
