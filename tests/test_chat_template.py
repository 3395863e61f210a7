"""Chat templates: rendered and tokenized as transformers does, hostile ones refused, used by data.

Reference: tests/fixtures/gguf/smollm2_135m/chat.json (transformers' apply_chat_template with the
template and tokenizer of SmolLM2's GGUF file, cached by `make models`: a missing file FAILS).
"""

import functools
import json
import os

import numpy as np
import pytest

from gkd_jax import chat_template as ct
from gkd_jax import data
from gkd_jax import gguf_tokenizer as gt
from gkd_jax import released
from gkd_jax import testing
from gkd_jax import tokenizers as tk

CHAT = os.path.join(os.path.dirname(__file__), "fixtures", "gguf", "smollm2_135m", "chat.json")
# transformers (5.25) builds the GGUF tokenizer of SmolLM2 without llama.cpp's `smollm`
# pre-tokenizer, which splits every digit off first (as SmolLM2's own tokenizer.json does): for
# "assistant\n\n9093" it splits "\n", "\n" where the model's tokenizer keeps "\n\n" (id 1116) whole.
TRANSFORMERS_SPLITS = {"final_assistant": ([198, 198], [1116])}
GEMMA_LIKE = (
    "{{ bos_token }}{% for m in messages %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
USER = {"role": "user", "content": "What is 472+389?"}
ANSWER = {"role": "assistant", "content": "It is 861."}


@functools.lru_cache(maxsize=None)
def _smollm():
  """Built once per module; inside the test (not a fixture), so a missing file FAILS the test."""
  return gt.tokenizer_from_gguf(released.path(released.SMOLLM2_135M))


@functools.lru_cache(maxsize=None)
def _cases():
  with open(CHAT, encoding="utf-8") as f:
    return json.load(f)["cases"]


def _replace_once(ids, old, new):
  for i in range(len(ids) - len(old) + 1):
    if ids[i : i + len(old)] == old:
      return ids[:i] + new + ids[i + len(old) :]
  raise AssertionError(f"{old} not in the reference ids")


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory):
  """A small sentencepiece tokenizer (pad 0, unk 1, bos 2, eos 3) with a Gemma-like template."""
  d = str(tmp_path_factory.mktemp("sp"))
  testing.build_sentencepiece(d, chat=True)
  tok = tk.load_tokenizer(d)
  tok.chat_template = GEMMA_LIKE
  return tok


def test_smollm2_chats_render_and_tokenize_as_transformers():
  tok = _smollm()
  mismatches = []
  for case in _cases():
    msgs, gen = case["messages"], case["add_generation_prompt"]
    text = ct.render(tok.chat_template, msgs, gen, **ct.special_tokens(tok))
    assert text == case["text"], case["name"]
    expected = case["ids"]
    if case["name"] in TRANSFORMERS_SPLITS:
      expected = _replace_once(expected, *TRANSFORMERS_SPLITS[case["name"]])
    if ct.encode_chat(tok, msgs, gen) != expected:
      mismatches.append(case["name"])
  assert mismatches == []
  assert _cases()[0]["ids"][:2] == [1, 9690]  # <|im_start|> matched inside the text


def test_end_of_turn_token_is_what_the_template_writes_after_an_answer(sp_tok):
  assert ct.end_of_turn_id(_smollm()) == 2  # <|im_end|>
  assert ct.end_of_turn_id(sp_tok) == sp_tok.token_to_id("<end_of_turn>")
  assert data.completion_end_id(sp_tok, "chatml") == sp_tok.token_to_id("<end_of_turn>")
  from gkd_jax import train

  assert train.stop_ids(sp_tok)[:2] == (sp_tok.token_to_id("<end_of_turn>"), sp_tok.eos_id)
  bare = tk.load_tokenizer(sp_tok.path)
  for template in (
      "{% for m in messages %}{{ m['content'] }}{% endfor %}",  # nothing after the answer
      "{% if messages[-1]['role'] == 'assistant' %}{{ raise_exception('no') }}{% endif %}",
  ):
    bare.chat_template = template
    assert ct.end_of_turn_id(bare) == bare.eos_id
  bare.chat_template = "{{ messages.__class__ }}"
  with pytest.raises(ValueError, match="refused"):
    ct.end_of_turn_id(bare)


def test_sentencepiece_control_strings_written_by_a_template_become_their_ids(sp_tok, tmp_path):
  bos, eos = sp_tok.id_to_token(2), sp_tok.id_to_token(3)  # "<s>", "</s>": CONTROL symbols
  text = ct.render(GEMMA_LIKE, [USER, ANSWER], False, **ct.special_tokens(sp_tok))
  assert text.startswith(f"{bos}<start_of_turn>user\n")
  ids = ct.encode_chat(sp_tok, [USER, ANSWER], add_generation_prompt=False)
  assert ids == [2] + sp_tok.encode(text[len(bos) :], add_bos=False)
  assert ids.count(2) == 1 and sp_tok.encode(bos, add_bos=False) != [2]
  # An EOS string inside the text (Phi-3, Mistral) likewise; user-defined pieces stay matched.
  a, b = sp_tok.encode("a", add_bos=False), sp_tok.encode("b", add_bos=False)
  assert ct.encode_rendered(sp_tok, f"a{eos}b") == a + [3] + b
  assert ct.encode_rendered(sp_tok, "<start_of_turn>") == [sp_tok.token_to_id("<start_of_turn>")]
  # A tokenizers backend matches "<bos>" in text itself: no cutting needed, the same ids.
  path = testing.build_tokenizer_json(str(tmp_path / "tj"), "gemma")
  tj = tk.load_tokenizer(os.path.dirname(path))
  tj.chat_template = GEMMA_LIKE
  ids = ct.encode_chat(tj, [USER])
  assert ids[0] == tj.bos_id and ids == tj.encode(
      ct.render(GEMMA_LIKE, [USER], bos_token="<bos>"), 0
  )


HOSTILE = {
    "mro": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "'__class__'"),
    "subclasses": ("{{ ().__class__.__base__.__subclasses__() }}", "'__class__'"),
    "cycler_globals": ("{{ cycler.__init__.__globals__.os.popen('id').read() }}", "'__init__'"),
    "lipsum_globals": ("{{ lipsum.__globals__['os'] }}", "'__globals__'"),
    "template_context": ("{{ self._TemplateReference__context }}", "_TemplateReference__context"),
    "unused_set": ("{% set x = ''.__class__ %}ok", "'__class__'"),
    "attr_filter": ("{{ ''|attr('__class__') }}", "'__class__'"),
    "format": ("{{ '{0.__class__}'.format('') }}", "'__class__'"),
    "percent": ("{{ '%s' % messages.__class__ }}", "'__class__'"),
    "bound_self": ("{{ messages[0].items.__self__ }}", "'__self__'"),
    "mutation": ("{% set d = {} %}{{ d.update(a=1) }}", "'update'"),
    "namespace_dunder": ("{% set ns = namespace(__init__=1) %}", "'__init__'"),
    "include": ("{% include '/etc/passwd' %}", "blocked 'include'"),
    "import": ("{% import 'os' as os %}{{ os }}", "blocked 'import'"),
    "from_import": ("{% from 'os' import system %}", "blocked 'fromimport'"),
    "extends": ("{% extends '/etc/passwd' %}", "blocked 'extends'"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_templates_are_refused_in_one_line(name):
  template, blocked = HOSTILE[name]
  with pytest.raises(ValueError) as e:
    ct.render(template, [USER], source="evil/tokenizer_config.json")
  message = str(e.value)
  assert message.startswith("evil/tokenizer_config.json: chat template refused: ")
  assert blocked in message and "\n" not in message


def test_broken_templates_are_one_line_errors(sp_tok):
  cases = {
      "{% for m in messages %}{{ m }": "chat template refused: syntax error at line 1",
      "{{ raise_exception('Conversation roles must alternate') }}": "raised an exception: "
      "Conversation roles must alternate",
      "{{ range(10**9) | list }}": "failed to render: OverflowError",
      "{{ messages[0]['content'] + 1 }}": "failed to render: TypeError",
  }
  for template, message in cases.items():
    with pytest.raises(ValueError) as e:
      ct.render(template, [USER], source="t.jinja")
    assert str(e.value).startswith("t.jinja: ") and message in str(e.value)
    assert "\n" not in str(e.value)
  sp_tok_source = ct._source(sp_tok)  # encode_chat names the tokenizer's file
  bad = tk.load_tokenizer(sp_tok.path)
  bad.chat_template = "{{ x.__class__ }}"
  with pytest.raises(ValueError, match="^" + sp_tok_source.replace("(", r"\(").replace(")", r"\)")):
    ct.encode_chat(bad, [USER])


def test_what_transformers_adds_to_jinja():
  template = (
      "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 2 %}{% break %}"
      "{% endif %}{% set ns.n = ns.n + 1 %}{% generation %}{{ m | tojson }}{% endgeneration %}"
      "{% endfor %}|{{ ns.n }}|{{ dict(a=1) | tojson }}|{{ strftime_now('%Y') | length }}"
      "|{{ tools }}|{{ add_generation_prompt }}"
      "{% for x in [1, 2, 3] %}{% if x == 2 %}{% continue %}{% endif %}{{ x }}{% endfor %}\n"
      "  {% if true %}\n  trimmed\n  {% endif %}\n"
  )
  msgs = [{"role": "user", "content": "ünï 😀"}, ANSWER, USER]
  assert ct.render(template, msgs, add_generation_prompt=False) == (
      '{"role": "user", "content": "ünï 😀"}{"role": "assistant", "content": "It is 861."}'
      '|2|{"a": 1}|4|None|False13  trimmed\n'  # trim_blocks and lstrip_blocks
  )
  # The template sees plain data: numpy scalars as numbers, other objects as a placeholder.
  odd = [{"role": "user", "content": "x", "n": np.int64(3), "o": object()}]
  assert ct.render("{{ messages[0]['n'] + 1 }} {{ messages[0]['o'] }}", odd) == "4 <object>"


def test_hf_folder_templates_and_add_bos_token(tmp_path):
  path = testing.build_tokenizer_json(str(tmp_path), "chatml")
  config_file = tmp_path / "tokenizer_config.json"
  config = json.loads(config_file.read_text())
  assert tk.load_tokenizer(str(tmp_path)).chat_template is None
  cases = [
      ("{{ messages }}", "{{ messages }}"),
      ([{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}], "D"),
  ]
  for template, expected in cases:
    config_file.write_text(
        json.dumps({**config, "chat_template": template, "add_bos_token": False})
    )
    tok = tk.load_tokenizer(path)
    assert tok.chat_template == expected and tok.add_bos_default is False
  config_file.write_text(
      json.dumps({**config, "chat_template": [{"name": "rag", "template": "R"}]})
  )
  with pytest.raises(ValueError, match="tokenizer_config.json: chat_template is a list without"):
    tk.load_tokenizer(path)
  (tmp_path / "chat_template.jinja").write_text("J")  # transformers' own file wins
  assert tk.load_tokenizer(path).chat_template == "J"


def test_without_a_template_the_family_format_is_used(sp_tok):
  bare = tk.load_tokenizer(sp_tok.path)
  ids = ct.encode_chat(bare, [USER], chat_family="gemma")
  assert ids == bare.encode(tk.apply_chat_template([USER], "gemma"), add_bos=True)
  with pytest.raises(ValueError, match="has no chat template: chat messages need a chat family"):
    ct.encode_chat(bare, [USER])


def _first_batch(records, tmp_path, tok, **kwargs):
  path = tmp_path / "d.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return next(
      iter(
          data.make_loader(
              str(path),
              tok,
              batch_size=len(records),
              max_prompt_len=96,
              max_completion_len=16,
              shuffle=False,
              shard_index=0,
              shard_count=1,
              **kwargs,
          )
      )
  )


def test_data_renders_chat_records_with_the_tokenizers_own_template(tmp_path):
  tok = _smollm()
  reference = next(c for c in _cases() if c["name"] == "user")["ids"]  # [USER] + generation prompt
  records = [{"messages": [USER, ANSWER]}, {"prompt": "2+2=", "completion": "4"}]
  for family in ({}, {"chat_family": "gemma"}):  # the template wins over data.chat_family
    b = _first_batch(records, tmp_path, tok, **family)
    prompt = b["prompt_tokens"][0][b["prompt_mask"][0] == 1].tolist()
    assert prompt == reference
    n = b["completion_mask"][0].sum()
    assert b["completion_tokens"][0][:n].tolist() == tok.encode("It is 861.", add_bos=False) + [2]
    # A plain prompt gets no BOS: SmolLM2's GGUF says add_bos_token = False.
    plain = b["prompt_tokens"][1][b["prompt_mask"][1] == 1].tolist()
    assert plain == tok.encode("2+2=", add_bos=False) and tok.bos_id not in plain


def test_data_with_a_sentencepiece_template_and_truncation(tmp_path, sp_tok):
  records = [{"messages": [USER, ANSWER]}, {"prompt": "Hello world", "completion": "teacher"}]
  b = _first_batch(records, tmp_path, sp_tok)
  prompt = b["prompt_tokens"][0][b["prompt_mask"][0] == 1].tolist()
  assert prompt == ct.encode_chat(sp_tok, [USER]) and prompt[0] == sp_tok.bos_id
  eot = sp_tok.token_to_id("<end_of_turn>")
  n0, n1 = b["completion_mask"][0].sum(), b["completion_mask"][1].sum()
  assert b["completion_tokens"][0][n0 - 1] == eot  # chat record: the template's end of turn
  assert b["completion_tokens"][1][n1 - 1] == sp_tok.eos_id  # plain record: EOS
  long_user = {"role": "user", "content": "student " * 200}
  b = _first_batch([{"messages": [long_user]}], tmp_path, sp_tok)
  prompt = b["prompt_tokens"][0].tolist()
  assert b["prompt_mask"][0].all() and prompt[0] == sp_tok.bos_id  # BOS kept in front
  assert prompt[1:] == ct.encode_chat(sp_tok, [long_user])[-95:]
