"""Small real tokenizers built inside tests (no downloads): a sentencepiece model and a tokenizer.json."""

import json
import os

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Knowledge distillation trains a small student to imitate a large teacher.",
    "On-policy distillation lets the student learn from its own samples!",
    "Numbers like 12345 and 678 appear; so do symbols: + - = ( ) ?",
    "Hello world, hello student, hello teacher.",
] * 4

CHAT_SPECIALS = {
    "gemma": ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"],
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
               "<|eot_id|>"],
    "chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
}


def build_sentencepiece(directory, vocab_size=120, chat=False):
  """Trains a small BPE sentencepiece model (pad=0, unk=1, bos=2, eos=3) into directory."""
  import sentencepiece as spm
  os.makedirs(directory, exist_ok=True)
  # Like Gemma's: no normalization, no dummy prefix, "\n" a piece of its own.
  extra = ["\n"] + (["<start_of_turn>", "<end_of_turn>"] if chat else [])
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(TEXT), model_prefix=os.path.join(directory, "tokenizer"),
      model_type="bpe", vocab_size=vocab_size, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
      user_defined_symbols=extra, normalization_rule_name="identity", add_dummy_prefix=False,
      remove_extra_whitespaces=False, byte_fallback=False, character_coverage=1.0, num_threads=1,
      minloglevel=2)
  os.remove(os.path.join(directory, "tokenizer.vocab"))
  return os.path.join(directory, "tokenizer.model")


def build_tokenizer_json(directory, family="chatml", vocab_size=200, configs=True):
  """Trains a byte-level BPE `tokenizers` model with the family's special tokens into directory."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  os.makedirs(directory, exist_ok=True)
  specials = CHAT_SPECIALS[family]
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(TEXT, trainer)
  tok.save(os.path.join(directory, "tokenizer.json"))
  if configs:
    cfg = {"gemma": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
           "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
           "chatml": {"bos_token": None, "eos_token": "<|im_end|>",
                      "pad_token": "<|endoftext|>"}}[family]
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
      json.dump(cfg, f)
  return os.path.join(directory, "tokenizer.json")
