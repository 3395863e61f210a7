"""Renders conversations with the real chat templates of Gemma, Llama 3 and Qwen (reference fixtures).

  .refvenv/bin/python experiments/make_chat_template_fixtures.py      (or: make fixtures)

The Jinja templates are the ones the checkpoints ship, as stored (byte-identical to the Hub's, for
identity checks) in the installed `trl` package's chat_templates/ folder; transformers renders them.
Nothing is downloaded. Writes tests/fixtures/chat_templates/rendered.json: for each template and
conversation the rendered string and the BOS text the template put in front of it.
tests/test_tokenizers.py checks gkd_jax.tokenizers.apply_chat_template against every case.
"""

import json
import os

import trl
from transformers.utils.chat_template_utils import render_jinja_template

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "chat_templates",
                   "rendered.json")

# template file in trl/chat_templates -> (our family, the template's bos_token, supports system)
TEMPLATES = {
    "gemma.jinja": ("gemma", "<bos>", False),  # Gemma 1/2 instruct
    "gemma3.jinja": ("gemma", "<bos>", True),
    "llama3.jinja": ("llama3", "<|begin_of_text|>", True),
    "qwen2_5.jinja": ("qwen2.5", "", True),
    "qwen3.jinja": ("chatml", "", True),
}

SYSTEM = {"role": "system", "content": "You are a careful math tutor. Show each step."}
U1 = {"role": "user", "content": "What is 472+389?"}
A1 = {"role": "assistant", "content": "2+9=11, carry 1; 7+8+1=16, carry 1; 4+3+1=8. So 861."}
U2 = {"role": "user", "content": "  And 15+9078?\n Explain briefly.  \n"}  # whitespace to trim
A2 = {"role": "assistant", "content": "\nIt is 9093.\n"}

CONVERSATIONS = [
    ("user", [U1], True),
    ("system_user", [SYSTEM, U1], True),
    ("multi_turn", [U1, A1, U2], True),
    ("system_multi_turn", [SYSTEM, U1, A1, U2], True),
    ("whitespace", [U2], True),
    ("no_generation_prompt", [U1], False),
    ("full_conversation", [U1, A1, U2, A2], False),
]


def main():
  folder = os.path.join(os.path.dirname(trl.__file__), "chat_templates")
  cases = []
  for name, (family, bos, system_ok) in TEMPLATES.items():
    with open(os.path.join(folder, name)) as f:
      template = f.read()
    for conv_name, messages, add_gen in CONVERSATIONS:
      if messages[0]["role"] == "system" and not system_ok:
        continue
      if name == "qwen3.jinja" and messages[-1]["role"] == "assistant":
        continue  # Qwen 3 wraps a final assistant turn in <think> tags: completions, not prompts
      rendered, _ = render_jinja_template(
          conversations=[messages], chat_template=template, add_generation_prompt=add_gen,
          bos_token=bos, eos_token="")
      rendered = rendered[0] if isinstance(rendered, list) else rendered
      cases.append({"template": name, "family": family, "conversation": conv_name,
                    "messages": messages, "add_generation_prompt": add_gen, "bos_text": bos,
                    "rendered": rendered})
  os.makedirs(os.path.dirname(OUT), exist_ok=True)
  with open(OUT, "w") as f:
    json.dump({"transformers_renderer": "transformers.utils.chat_template_utils",
               "trl_version": trl.__version__, "cases": cases}, f, indent=1)
  print(f"wrote {len(cases)} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
  main()
