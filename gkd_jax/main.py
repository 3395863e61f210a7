"""`gkd-jax` command line: COMMANDS below lists each command, its flags and an example, and is what
`gkd-jax --help` and `gkd-jax COMMAND --help` print.

Bad input (config values, paths, data lines, vocabularies, flags, a workdir in use or holding
another experiment) ends with one line on stderr and exit code 2; a training run that produces a
non-finite loss or gradient ends with one line and exit code 3.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "The run's config, a configs/*.py file (every field with its default and meaning: "
    "configs/default.py); --config.<group>.<field>=VALUE overrides one of its fields.",
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "train: run directory (checkpoints, metrics, exported student); an existing one is resumed.",
)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint",
    "",
    "eval/sample: HF checkpoint dir or .gguf file of the student (default: config.student.path); "
    "convert --to_gguf / prune: the checkpoint to read.",
)
_PROMPTS = flags.DEFINE_string(
    "prompts", "-", "sample: file with one prompt per line ('-': stdin)."
)
_CHAT = flags.DEFINE_enum(
    "chat",
    "auto",
    ["auto", "yes", "no"],
    "sample: send each prompt as a user message through the chat template (auto: when the "
    "tokenizer has one of its own, or data.chat_family is set).",
)
_RESTART = flags.DEFINE_bool(
    "restart",
    False,
    "train: start over in an existing --workdir (removes its checkpoints, metrics and exported student) instead of resuming.",
)
_MULTIHOST = flags.DEFINE_bool(
    "multihost",
    False,
    "Call jax.distributed.initialize() first (every host of a TPU slice / multi-node GPU job runs the same command).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator",
    "",
    "--multihost: HOST:PORT of process 0 (with --num_processes, --process_id; absent: auto-detect).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "--multihost: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "--multihost: this process's index.")
_TOPOLOGY = flags.DEFINE_string(
    "topology",
    "",
    "plan: TPU accelerator type (v5p-64, v6e-8, v5litepod-16, v4-32) or topology (v5p:4x4x2); see gkd_jax/plan.py.",
)
_JSON = flags.DEFINE_bool("json", False, "plan: end the output with one JSON object.")
_EXPLAIN = flags.DEFINE_bool(
    "explain",
    False,
    "plan: also list the buffers live at each program's peak memory, grouped (student and teacher "
    "params, gathered weights, activations, KV cache, ...; gkd_jax/memory_report.py).",
)
_OUT = flags.DEFINE_string(
    "out",
    None,
    "cache-teacher: directory of the teacher cache (an interrupted one is continued); "
    "convert --gguf / prune: the HF folder to write.",
)
_GGUF = flags.DEFINE_string("gguf", "", "convert: a .gguf file to write as an HF folder (--out).")
_TO_GGUF = flags.DEFINE_string("to_gguf", "", "convert: write --checkpoint as this .gguf file.")
_GGUF_TYPE = flags.DEFINE_enum(
    "gguf_type", "f32", ["f32", "f16", "bf16", "q8_0"], "convert --to_gguf: tensor type."
)
_NUM_LAYERS = flags.DEFINE_integer("num_layers", None, "prune: layers to keep.")
_PRUNE_RULE = flags.DEFINE_enum(
    "prune_rule",
    "importance",
    ["importance", "even"],
    "prune: keep the most important layers (Minitron block importance on --calibration) or evenly "
    "spaced ones; both keep the first, the last and every global-attention layer.",
)
_CALIBRATION = flags.DEFINE_string(
    "calibration", "", "prune: JSONL records whose prompts measure block importance."
)


@dataclasses.dataclass(frozen=True)
class Command:
  """One `gkd-jax` command, as its --help shows it (the flags' own help strings are absl's)."""

  summary: str  # what it does, one sentence
  usage: str  # the arguments after `gkd-jax NAME`
  flags: tuple  # the names of the flags it reads, in the order its help lists them
  example: str  # one command line, `gkd-jax NAME ...`

  @property
  def takes_config(self) -> bool:
    return "config" in self.flags


_MULTIHOST_FLAGS = ("multihost", "coordinator", "num_processes", "process_id")
COMMANDS = {
    "train": Command(
        "Distil the teacher into the student (on-policy GKD, supervised KD or SFT, as the config "
        "says); --workdir gets checkpoints, metrics and the exported student, and a run in it "
        "is resumed.",
        "--config=FILE --workdir=DIR [--restart] [--config.<group>.<field>=VALUE ...]",
        ("config", "workdir", "restart", *_MULTIHOST_FLAGS),
        "gkd-jax train --config=configs/demo.py --workdir=/tmp/run --config.gkd.lmbda=0.5",
    ),
    "eval": Command(
        "Evaluate a student checkpoint on the config's held-out data: loss and task metric, "
        "printed as JSON.",
        "--config=FILE [--checkpoint=DIR|FILE.gguf] [--config.<group>.<field>=VALUE ...]",
        ("config", "checkpoint", *_MULTIHOST_FLAGS),
        "gkd-jax eval --config=configs/demo.py --checkpoint=/tmp/run/student",
    ),
    "sample": Command(
        "Sample the student's completions of prompts (one per line), printed as JSON lines.",
        "--config=FILE [--checkpoint=DIR|FILE.gguf] [--prompts=FILE|-] [--chat=auto|yes|no]",
        ("config", "checkpoint", "prompts", "chat", *_MULTIHOST_FLAGS),
        "echo 'Q: 123+456' | gkd-jax sample --config=configs/demo.py --checkpoint=/tmp/run/student",
    ),
    "compare": Command(
        "Finished training runs side by side: one table of their final metrics.",
        "WORKDIR [WORKDIR ...]",
        (),
        "gkd-jax compare /tmp/run_kd /tmp/run_on_policy",
    ),
    "plan": Command(
        "Check that a config fits a TPU slice before running it: compiles its programs with the "
        "real XLA:TPU compiler on this host (libtpu: the `tpu` extra; no TPU, no weights) and "
        "reports per-chip memory; exit code 1 when something does not fit.",
        "--config=FILE --topology=TYPE [--json] [--explain] [--config.<group>.<field>=VALUE ...]",
        ("config", "topology", "json", "explain"),
        "gkd-jax plan --config=configs/gemma2_9b_to_2b.py --topology=v5p-64",
    ),
    "cache-teacher": Command(
        "Write the teacher's top-k next-token distributions over the training data once, for "
        "training without the teacher in memory (--config.gkd.teacher_cache=DIR, λ=0).",
        "--config=FILE --out=DIR [--config.<group>.<field>=VALUE ...]",
        ("config", "out", *_MULTIHOST_FLAGS),
        "gkd-jax cache-teacher --config=configs/demo.py --out=/tmp/teacher_cache",
    ),
    "convert": Command(
        "Convert a model: a GGUF file to an HF folder (weights, tokenizer, chat template), or "
        "an HF folder or GGUF file to GGUF.",
        "--gguf=FILE.gguf --out=DIR | --checkpoint=DIR --to_gguf=FILE.gguf [--gguf_type=TYPE]",
        ("gguf", "out", "checkpoint", "to_gguf", "gguf_type"),
        "gkd-jax convert --gguf=model.gguf --out=/tmp/model",
    ),
    "prune": Command(
        "Depth-prune a checkpoint to --num_layers layers (Minitron block importance on "
        "--calibration prompts, or evenly spaced) and write it as an HF folder.",
        "--checkpoint=DIR|FILE.gguf --out=DIR --num_layers=N [--prune_rule=RULE] "
        "[--calibration=FILE.jsonl]",
        ("checkpoint", "out", "num_layers", "prune_rule", "calibration"),
        "gkd-jax prune --checkpoint=/tmp/model --out=/tmp/pruned --num_layers=15 "
        "--calibration=train.jsonl",
    ),
}
_HELP_FLAGS = ("-h", "-?", "--help", "--helpshort")
_OVERRIDES = (
    "Config overrides: --config.<group>.<field>=VALUE sets one field of the --config file "
    "(every field with its default and meaning: configs/default.py), e.g. --config.gkd.lmbda=0.5 "
    "--config.train.num_steps=100."
)
_FOOTER = "Every flag, the libraries' too: gkd-jax --helpfull."


def _wrap(text: str, indent: str) -> str:
  return flags.text_wrap(text, length=100, indent=indent)


def _flag_help(name: str) -> str:
  """`--name` and its absl help (with its default where it has one), indented."""
  flag = flags.FLAGS[name]
  text = flag.help
  if flag.default not in (None, "") and not flag.boolean:
    text += f" (default: {flag.default})"
  return f"  --{'[no]' if flag.boolean else ''}{name}\n{_wrap(text, ' ' * 6)}"


def help_text(command: str = "") -> str:
  """What `gkd-jax COMMAND --help` prints (`gkd-jax --help` without a command)."""
  if command in COMMANDS:
    c = COMMANDS[command]
    parts = [
        _wrap(f"gkd-jax {command}: {c.summary}", ""),
        flags.text_wrap(f"usage: gkd-jax {command} {c.usage}", 100, " " * 4, ""),
    ]
    if c.flags:
      parts.append("flags:\n" + "\n".join(_flag_help(f) for f in c.flags))
    if c.takes_config:
      parts.append(_wrap(_OVERRIDES, ""))
    parts += [f"example:\n  {c.example}", _FOOTER]
    return "\n\n".join(parts) + "\n"
  names = "\n".join(f"  {n:<15}{_wrap(c.summary, ' ' * 17).lstrip()}" for n, c in COMMANDS.items())
  own = dict.fromkeys(f for c in COMMANDS.values() for f in c.flags)  # each once, in command order
  return (
      "\n\n".join(
          [
              "gkd-jax: on-policy knowledge distillation (GKD) of language models in JAX.",
              "usage: gkd-jax COMMAND [flags]   (gkd-jax COMMAND --help: its flags and an example)",
              f"commands:\n{names}",
              "flags (each command's --help lists the ones it reads):\n"
              + "\n".join(_flag_help(f) for f in own),
              _wrap(_OVERRIDES, ""),
              f"example:\n  {COMMANDS['train'].example}",
              _FOOTER,
          ]
      )
      + "\n"
  )


def _student_override(config):
  if _CHECKPOINT.value:
    with config.unlocked():
      config.student.path = _CHECKPOINT.value
  return config


def _sample(config):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gkd_jax import chat_template, train  # pylint: disable=g-import-not-at-top
  from gkd_jax.sampling import sample  # pylint: disable=g-import-not-at-top
  from gkd_jax.data import truncate_prompt  # pylint: disable=g-import-not-at-top

  lines = _read_prompts(_PROMPTS.value)
  run = train.build(config, mode="sample")
  config, tok = run.config, run.tokenizer
  s = config.sampling
  rng = jax.random.key(config.seed)
  stops = train.stop_ids(tok, config.data.chat_family)
  max_len = min(
      config.data.max_prompt_len, run.student.config.max_position_embeddings - s.max_new_tokens
  )
  family = config.data.chat_family or None
  chat = _CHAT.value == "yes" or (_CHAT.value == "auto" and bool(tok.chat_template or family))
  for i, prompt in enumerate(l.replace("\\n", "\n") for l in lines if l.strip()):
    if chat:
      messages = [{"role": "user", "content": prompt}]
      ids = chat_template.encode_chat(tok, messages, chat_family=family)
    else:
      ids = tok.encode(prompt, add_bos=None)  # BOS as the checkpoint adds it
    if len(ids) > max_len:  # as training does: keep the end, which the completion follows
      logging.warning(
          "prompt %d has %d tokens; keeping its last %d (data.max_prompt_len, and "
          "the model's positions less sampling.max_new_tokens)",
          i + 1,
          len(ids),
          max_len,
      )
      ids = truncate_prompt(ids, max_len, tok.bos_id)
    out = sample(
        run.student,
        run.params,
        np.asarray([ids], np.int32),
        np.ones((1, len(ids)), np.int32),
        jax.random.fold_in(rng, i),
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        eos_id=stops,
    )
    ids = [int(t) for t, m in zip(out.tokens[0], out.mask[0]) if m and t not in stops]
    print(json.dumps({"prompt": prompt, "completion": tok.decode(ids)}), flush=True)


def _convert() -> int:
  """`gkd-jax convert`: GGUF -> HF folder (--gguf, --out) or HF folder/GGUF -> GGUF (--to_gguf)."""
  from gkd_jax import convert  # pylint: disable=g-import-not-at-top

  try:
    if _GGUF.value and _OUT.value and not _TO_GGUF.value:
      print(convert.gguf_to_hf(_GGUF.value, _OUT.value))
    elif _TO_GGUF.value and _CHECKPOINT.value and not _GGUF.value:
      print(convert.to_gguf(_CHECKPOINT.value, _TO_GGUF.value, _GGUF_TYPE.value))
    else:
      _usage("convert needs --gguf=FILE --out=DIR, or --checkpoint=DIR --to_gguf=FILE")
  except (ValueError, OSError) as e:
    print(f"gkd-jax convert: error: {_one_line(e)}", file=sys.stderr)
    return 2
  return 0


def _prune() -> int:
  """`gkd-jax prune`: --checkpoint pruned to --num_layers layers, written to --out."""
  from gkd_jax.prune_checkpoint import prune_checkpoint  # pylint: disable=g-import-not-at-top

  if not (_CHECKPOINT.value and _OUT.value and _NUM_LAYERS.value):
    _usage("prune needs --checkpoint=DIR|FILE.gguf --out=DIR --num_layers=N")
  try:
    record = prune_checkpoint(
        _CHECKPOINT.value, _OUT.value, _NUM_LAYERS.value, _PRUNE_RULE.value, _CALIBRATION.value
    )
  except (ValueError, OSError) as e:
    print(f"gkd-jax prune: error: {_one_line(e)}", file=sys.stderr)
    return 2
  print(json.dumps({"out": _OUT.value, "kept": record["kept"]}))
  return 0


def _usage(message):
  raise app.UsageError(message, exitcode=2)


def _read_prompts(path: str) -> list:
  if path == "-":
    return sys.stdin.read().splitlines()
  if not os.path.isfile(path):
    raise ValueError(f"--prompts={path} is not a file (one prompt per line, or - for stdin)")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return raw.decode("utf-8").splitlines()
  except UnicodeDecodeError as e:
    line = raw[: e.start].count(b"\n") + 1
    raise ValueError(f"--prompts={path}:{line}: not UTF-8 text") from None


def _config():
  """The --config file's config; a missing or broken file is a usage error."""
  path = config_flags.get_config_filename(flags.FLAGS["config"])
  if path is None:
    raise app.UsageError("--config is required", exitcode=2)
  problem = None if os.path.isfile(path.split(":")[0]) else "no such file"
  if problem is None:
    try:
      return _CONFIG.value
    except Exception as e:  # pylint: disable=broad-except
      problem = _one_line(e)
  print(f"gkd-jax: error: --config={path}: {problem}", file=sys.stderr)
  sys.exit(2)


def _one_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).replace("\\n", "\n").splitlines() if l.strip()]
  return " ".join(lines)[:300] or type(e).__name__


def main(argv):
  if len(argv) >= 2 and argv[1] == "compare":
    from gkd_jax import report  # pylint: disable=g-import-not-at-top

    try:
      print(report.compare_table(argv[2:] or _usage("compare needs at least one WORKDIR")))
    except (ValueError, FileNotFoundError) as e:
      print(f"gkd-jax compare: error: {e}", file=sys.stderr)
      sys.exit(2)
    return
  if len(argv) == 2 and argv[1] in ("convert", "prune"):
    sys.exit(_convert() if argv[1] == "convert" else _prune())
  if len(argv) != 2 or argv[1] not in COMMANDS:
    _usage(
        f"usage: gkd-jax {{{','.join(COMMANDS)}}} [flags] (gkd-jax --help: the commands; "
        "gkd-jax COMMAND --help: its flags)"
    )
  config = _config()
  command = argv[1]
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; -v 0 brings it back
  if (
      command == "plan"
  ):  # compiles for a TPU slice on this host: no weights, data or distributed run
    from gkd_jax import plan  # pylint: disable=g-import-not-at-top

    sys.exit(
        plan.main(
            config,
            _TOPOLOGY.value,
            _JSON.value,
            config_flags.get_config_filename(flags.FLAGS["config"]),
            explain=_EXPLAIN.value,
        )
    )
  try:
    if _MULTIHOST.value:
      from gkd_jax import distributed  # pylint: disable=g-import-not-at-top

      distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from gkd_jax import train  # pylint: disable=g-import-not-at-top

    if command == "train":
      if not _WORKDIR.value:
        raise app.UsageError("train needs --workdir", exitcode=2)
      train.train(config, _WORKDIR.value, restart=_RESTART.value)
    elif command == "eval":
      print(json.dumps(train.evaluate_checkpoint(_student_override(config)), indent=1))
    elif command == "cache-teacher":
      if not _OUT.value:
        raise app.UsageError("cache-teacher needs --out", exitcode=2)
      from gkd_jax import config_validation, teacher_cache  # pylint: disable=g-import-not-at-top

      config_validation.validate(config, mode="train")
      print(json.dumps(teacher_cache.write_cache(config, _OUT.value)))
    else:
      _sample(_student_override(config))
  except (ValueError, OSError) as e:
    print(f"gkd-jax {command}: error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  except RuntimeError as e:
    from gkd_jax.finite import NonFiniteError  # pylint: disable=g-import-not-at-top

    if not isinstance(e, NonFiniteError):
      raise
    print(f"gkd-jax {command}: error: {e}", file=sys.stderr)
    sys.exit(3)


def help_requested(argv) -> str | None:
  """None, or the command whose help argv asks for ("": the top level; a flag after -- is an
  argument)."""
  args = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
  if not any(a in _HELP_FLAGS for a in args):
    return None
  return next((a for a in args if a in COMMANDS), "")


def _parse_flags(argv):
  """absl's flag parsing, with every bad flag (a typo'd --config.<field> too) as one line, exit 2;
  --help (-h, -?, --helpshort) prints help_text for the command named, exit 0."""
  command = help_requested(argv)
  if command is not None:
    print(help_text(command), end="")
    sys.exit(0)
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    message = _one_line(e)
    if isinstance(e, (AttributeError, KeyError)):  # a --config.<field> override names no field
      found = re.search(r"[\"'\\]+(\w+)[\"'\\]+", message)
      missing = found.group(1) if found else ""
      named = [
          a.split("=")[0]
          for a in argv
          if a.startswith("--config.") and missing in a.split("=")[0].split(".")
      ]
      message = f"{named[0] if named else '--config.*'}: no such config field ({message})"
    print(f"gkd-jax: error: {message} (see configs/default.py)", file=sys.stderr)
    sys.exit(2)


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
