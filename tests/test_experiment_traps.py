"""Runs that would silently compute something else: held-out metrics weighted by batch instead of by
token, and a teacher whose tokenizer gives the same number of tokens other ids."""

import json
import shutil

import jax
import numpy as np
import pytest

from gkd_jax import batches, evaluation, programs, train
from gkd_jax.tokenizers import load_tokenizer
from test_train import ASSETS, _config, run_files  # noqa: F401 (fixture)


def test_heldout_metrics_are_means_over_tokens_whatever_the_eval_batch(run_files):
  config = _config(run_files)
  config.data.eval_path = f"{ASSETS}/eval.jsonl"
  config.mesh.data = 1
  config.eval.num_examples = 16
  config.data.max_completion_len = 44  # whole completions, of different lengths
  results, tokens = {}, None
  for batch_size in (4, 16):  # 16: one batch, so the plain token mean over all 16 examples
    config.eval.batch_size = batch_size
    run = train.build(config, devices=jax.devices()[:1])
    if batch_size == 4:
      loader = batches.loader(run, config.data.eval_path, batch_size=4, shuffle=False, num_epochs=1)
      tokens = [int(b["completion_mask"].sum()) for _, b in zip(range(4), loader)]
    results[batch_size] = evaluation._heldout(run, run.params, programs.compile_steps(run))
  assert len(set(tokens)) > 1, tokens  # batches of unequal token counts: the weighting matters
  assert set(results[4]) == {
      "eval/divergence",
      "eval/cross_entropy",
      "eval/teacher_entropy",
      "eval/student_entropy",
  }
  for key, want in results[16].items():
    np.testing.assert_allclose(results[4][key], want, rtol=1e-5, err_msg=key)


def _teacher_with_tokenizer(tmp_path, run_files, swap):
  """The tiny teacher plus a tokenizer.json holding the student's tokens, two ids swapped."""
  import tokenizers  # pylint: disable=import-outside-toplevel

  d = tmp_path / ("swapped" if swap else "same")
  shutil.copytree(run_files["teacher"], d)
  sp = load_tokenizer(f"{ASSETS}/tokenizer.model")
  vocab = {sp.id_to_token(i): i for i in range(sp.vocab_size)}
  if swap:
    vocab["1"], vocab["2"] = vocab["2"], vocab["1"]
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.save(str(d / "tokenizer.json"))
  (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
  return str(d)


def test_teacher_tokenizer_is_compared_by_content_not_size(run_files, tmp_path):
  config = _config(run_files)
  config.mesh.data = 1
  config.teacher.path = _teacher_with_tokenizer(tmp_path, run_files, swap=False)
  train.build(config, devices=jax.devices()[:1])  # the same vocabulary in another format
  config.teacher.path = _teacher_with_tokenizer(tmp_path, run_files, swap=True)
  with pytest.raises(ValueError, match=r"teacher tokenizer .* id 6 is '1' vs '2'; distillation"):
    train.build(config, devices=jax.devices()[:1])
