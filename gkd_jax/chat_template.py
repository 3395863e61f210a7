"""A checkpoint's own Jinja chat template, rendered and tokenized exactly as transformers does.

  text = render(template, messages, add_generation_prompt=True, bos_token="<bos>")
  ids = encode_chat(tokenizer, messages)      # the tokenizer's template, else a chat family
  end = end_of_turn_id(tokenizer)             # the token that closes an assistant turn

Rendering follows transformers' `apply_chat_template`: jinja2's ImmutableSandboxedEnvironment with
trim_blocks and lstrip_blocks, the loopcontrols extension and `{% generation %}` blocks, a `tojson`
filter that keeps non-ASCII text, the globals `raise_exception`, `strftime_now`, `dict` and an
underscore-refusing `namespace`, and the variables messages, tools (None), documents (None),
add_generation_prompt and the special token strings (bos_token, eos_token, unk_token, pad_token).
The template sees a plain-data copy of the messages.

A chat template is code that came with a checkpoint, so it runs sandboxed: a template reaching for
Python internals (`__class__`, `__globals__`, `_TemplateReference__context`, ...) or loading other
templates or files (`include`, `import`, `extends`) is refused with one ValueError line naming the
template's source and what was blocked; a syntax error, or a template that raises, is one line too.

Tokenizing follows transformers as well: the rendered text is encoded without adding special
tokens, so special-token strings the template writes are matched in the text (`<|im_start|>`). One
backend cannot: sentencepiece never matches a CONTROL symbol inside text, so the BOS, EOS, pad and
unk strings a template writes (Gemma's leading `{{ bos_token }}`, Phi-3's `<eos>` after a turn) are
cut out of the text and replaced by their ids, which gives transformers' ids for both backends.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
from typing import Any, Optional, Sequence

from gkd_jax import tokenizers as tok_lib

MIN_JINJA2 = (3, 1, 6)  # older sandboxes have known escapes (transformers refuses them too)
_LOADERS = ("Include", "Import", "FromImport", "Extends")
# What end_of_turn_id puts in an assistant message to find what the template writes after it.
_PROBE = "gkd-jax end-of-turn probe"


def _one_line(text: str, limit: int = 300) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[: limit - 3] + "..."


class TemplateRefused(ValueError):
  """A template that is not rendered at all: a syntax error, or blocked by the sandbox."""


class _TemplateRaised(Exception):
  """What the template's raise_exception(message) raises (e.g. roles that do not alternate)."""


@functools.lru_cache(maxsize=None)
def _environment():
  """The sandboxed environment transformers renders chat templates in (see the module docstring)."""
  import jinja2  # pylint: disable=import-outside-toplevel
  from jinja2 import ext, nodes  # pylint: disable=import-outside-toplevel
  from jinja2 import sandbox  # pylint: disable=import-outside-toplevel

  version = tuple(int(x) for x in re.findall(r"\d+", jinja2.__version__)[:3])
  if version < MIN_JINJA2:
    raise ValueError(
        f"jinja2 {jinja2.__version__} has known sandbox escapes; chat templates need jinja2 >= "
        f"{'.'.join(map(str, MIN_JINJA2))}"
    )

  class Generation(ext.Extension):
    """`{% generation %}...{% endgeneration %}` (assistant-mask markers): renders its body."""

    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  class Namespace(jinja2.utils.Namespace):
    """jinja2's namespace() that refuses underscore names (no route to CPython internals)."""

    def __init__(*args, **kwargs):  # pylint: disable=no-method-argument
      self, args = args[0], args[1:]
      attrs = dict(*args, **kwargs)
      for name in attrs:
        Namespace.check(name)
      jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
      Namespace.check(name)
      jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def check(name):
      if isinstance(name, str) and name.startswith("_"):
        raise sandbox.SecurityError(f"namespace attribute {name!r} starts with '_'")

  class Dict:
    """dict() and dict.fromkeys() without the dict type itself."""

    def __call__(self, *args, **kwargs):
      return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
      return dict.fromkeys(*args, **kwargs)

  def raise_exception(message):
    raise _TemplateRaised(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )

  class Sandbox(sandbox.ImmutableSandboxedEnvironment):
    """transformers' sandbox, except that reaching an unsafe attribute fails at once: jinja2's
    returns an undefined value that prints as "" and only fails when used further."""

    def unsafe_undefined(self, obj, attribute):
      raise sandbox.SecurityError(
          f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
      )

  env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  env.globals["dict"] = Dict()
  env.globals["namespace"] = Namespace
  return env


@functools.lru_cache(maxsize=32)
def _compile(template: str):
  """(compiled template, None) or (None, why it is refused) for a template string."""
  import jinja2  # pylint: disable=import-outside-toplevel

  env = _environment()
  try:
    tree = env.parse(template)
  except jinja2.TemplateSyntaxError as e:
    return None, f"syntax error at line {e.lineno}: {_one_line(e.message or e)}"
  for kind in _LOADERS:
    node = next(tree.find_all(getattr(jinja2.nodes, kind)), None)
    if node is not None:
      return None, (
          f"blocked {kind.lower()!r} at line {node.lineno}: a chat template may not load other "
          "templates or files"
      )
  return env.from_string(template), None


def _plain(value: Any) -> Any:
  """A copy of `value` made of JSON types only (what transformers lets a template see): subclasses
  and numpy scalars back to the base type, anything else a placeholder naming its type."""
  if value is None or type(value) in (str, int, float, bool):
    return value
  if isinstance(value, dict):
    return {_plain(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  for kind in (bool, int, float):
    if isinstance(value, kind):
      return kind(value)
  if isinstance(value, str):
    return str.__str__(value)
  if type(value).__module__ == "numpy" and hasattr(value, "item"):
    return _plain(value.item())
  return f"<{type(value).__name__}>"


def render(
    template: str,
    messages: Sequence[dict],
    add_generation_prompt: bool = True,
    *,
    source: str = "chat template",
    **variables,
) -> str:
  """The text transformers' apply_chat_template(tokenize=False) gives for `messages`.

  `variables` are further template variables (bos_token, eos_token, ...). `source` names the
  template in errors (e.g. the checkpoint file it came from)."""
  from jinja2 import sandbox  # pylint: disable=import-outside-toplevel

  if not isinstance(template, str) or not template:
    raise ValueError(f"{source}: chat template must be a non-empty string")
  if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
    raise ValueError(f"{source}: messages must be a list of dicts")
  compiled, refused = _compile(template)
  if refused:
    raise TemplateRefused(f"{source}: chat template refused: {refused}")
  context = {"tools": None, "documents": None, **_plain(variables)}
  context.update(messages=_plain(list(messages)), add_generation_prompt=bool(add_generation_prompt))
  try:
    return compiled.render(**context)
  except sandbox.SecurityError as e:
    raise TemplateRefused(
        f"{source}: chat template refused: blocked by the sandbox: {_one_line(e)}"
    ) from None
  except _TemplateRaised as e:
    raise ValueError(f"{source}: chat template raised an exception: {_one_line(e)}") from None
  except Exception as e:  # pylint: disable=broad-except  # template code can raise anything
    raise ValueError(
        f"{source}: chat template failed to render: {type(e).__name__}: {_one_line(e)}"
    ) from None


def special_tokens(tokenizer) -> dict[str, str]:
  """The special token strings a template sees (bos_token, eos_token, unk_token, pad_token)."""
  out = {}
  for kind in ("bos", "eos", "unk", "pad"):
    i = getattr(tokenizer, f"{kind}_id", None)
    if i is not None:
      out[f"{kind}_token"] = tokenizer.id_to_token(i)
  return out


def _source(tokenizer) -> str:
  return f"{tokenizer.path or 'tokenizer'} (chat template)"


def _unmatched_specials(tokenizer) -> dict[str, int]:
  """Special token strings (BOS, EOS, pad, unk) that the backend does not match inside text
  (sentencepiece CONTROL symbols) -> their ids."""
  out = {}
  for kind in ("bos", "eos", "pad", "unk"):
    i = getattr(tokenizer, f"{kind}_id", None)
    if i is None:
      continue
    text = tokenizer.id_to_token(i)
    if text and tokenizer.encode(text, add_bos=False) != [i]:
      out.setdefault(text, i)
  return out


def encode_rendered(tokenizer, text: str) -> list[int]:
  """Ids of a rendered chat as transformers gives them: no special tokens added, and every special
  token string in the text its id; where the backend does not match one inside text (a
  sentencepiece CONTROL symbol: `<bos>`, `<eos>`), the text is cut there and the id put in."""
  specials = _unmatched_specials(tokenizer)
  if not specials or not any(s in text for s in specials):
    return tokenizer.encode(text, add_bos=False)
  pattern = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
  ids = []
  for k, part in enumerate(re.split(f"({pattern})", text)):
    if k % 2:
      ids.append(specials[part])
    elif part:
      ids.extend(tokenizer.encode(part, add_bos=False))
  return ids


def encode_chat(
    tokenizer, messages, add_generation_prompt: bool = True, chat_family: Optional[str] = None
) -> list[int]:
  """Token ids of a conversation: with the tokenizer's own chat template when it has one (the ids
  transformers' apply_chat_template gives), else in `chat_family`'s format with a BOS first."""
  if tokenizer.chat_template:
    text = render(
        tokenizer.chat_template,
        messages,
        add_generation_prompt,
        source=_source(tokenizer),
        **special_tokens(tokenizer),
    )
    return encode_rendered(tokenizer, text)
  if not chat_family:
    raise ValueError(
        f"{tokenizer.path or 'tokenizer'} has no chat template: chat messages need a chat family "
        f"({', '.join(tok_lib.CHAT_FAMILIES)})"
    )
  text = tok_lib.apply_chat_template(messages, chat_family, add_generation_prompt)
  return tokenizer.encode(text, add_bos=True)


def end_of_turn_id(tokenizer) -> int:
  """The id the tokenizer's chat template writes right after an assistant message's content (its
  end-of-turn token: `<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`); EOS when the template writes
  nothing there or raises on a user/assistant exchange (a refused template is an error). Leading
  whitespace is skipped."""
  messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
  try:
    text = render(
        tokenizer.chat_template,
        messages,
        add_generation_prompt=False,
        source=_source(tokenizer),
        **special_tokens(tokenizer),
    )
  except TemplateRefused:
    raise
  except ValueError:
    return tokenizer.eos_id
  at = text.rfind(_PROBE)
  after = text[at + len(_PROBE) :].lstrip() if at >= 0 else ""
  ids = tokenizer.encode(after, add_bos=False) if after else []
  return ids[0] if ids else tokenizer.eos_id
