"""`gkd-jax --help` and `gkd-jax COMMAND --help`: what each command does, the flags it reads with
their help, the --config override syntax and an example; none of the libraries' flags."""

import os
import subprocess
import sys

import pytest
from absl import flags

from gkd_jax import main

# What each command reads (gkd_jax/main.py), written out here so that the help is checked against
# it rather than against itself.
MULTIHOST = {"multihost", "coordinator", "num_processes", "process_id"}
EXPECTED = {
    "train": {"config", "workdir", "restart"} | MULTIHOST,
    "eval": {"config", "checkpoint"} | MULTIHOST,
    "sample": {"config", "checkpoint", "prompts", "chat"} | MULTIHOST,
    "compare": set(),
    "plan": {"config", "topology", "json", "explain"},
    "cache-teacher": {"config", "out"} | MULTIHOST,
    "convert": {"gguf", "out", "checkpoint", "to_gguf", "gguf_type"},
    "prune": {"checkpoint", "out", "num_layers", "prune_rule", "calibration"},
}
OWN_FLAGS = {f.name for f in flags.FLAGS.flags_by_module_dict()["gkd_jax.main"]}
LIBRARY_FLAGS = ("--jax_", "--xla_", "--verbosity", "--logtostderr", "--pdb", "--helpxml")


def _help(capsys, *args) -> str:
  with pytest.raises(SystemExit) as e:
    main._parse_flags(["gkd-jax", *args])  # the flags parser `gkd-jax` runs (absl's app.run)
  assert e.value.code == 0
  out, err = capsys.readouterr()
  assert not err
  return out


def _named(text: str, name: str) -> bool:
  return f"--{name}\n" in text or f"--[no]{name}\n" in text


def test_every_command_and_flag_is_documented():
  assert set(main.COMMANDS) == set(EXPECTED)
  assert set().union(*EXPECTED.values()) == OWN_FLAGS


@pytest.mark.parametrize("command", sorted(EXPECTED))
def test_command_help_names_its_flags_and_an_example(command, capsys):
  text = _help(capsys, command, "--help")
  assert text.startswith(f"gkd-jax {command}: ")
  assert f"usage: gkd-jax {command} " in text
  for name in EXPECTED[command]:
    assert _named(text, name), name
    first_words = " ".join(flags.FLAGS[name].help.split()[:4])
    assert first_words in " ".join(text.split()), name  # absl's own help string
  for name in OWN_FLAGS - EXPECTED[command]:
    assert not _named(text, name), name  # another command's flag
  assert ("--config.<group>.<field>=" in text) == ("config" in EXPECTED[command])
  assert f"example:\n  gkd-jax {command} " in text or f"| gkd-jax {command} " in text
  assert not any(lib in text for lib in LIBRARY_FLAGS)


def test_top_level_help_lists_commands_flags_overrides_and_an_example(capsys):
  text = _help(capsys, "--help")
  assert text.startswith("gkd-jax: ")
  for command in EXPECTED:
    assert f"\n  {command} " in text, command
  for name in OWN_FLAGS:
    assert _named(text, name), name
  assert "--config.<group>.<field>=VALUE" in text and "example:\n  gkd-jax train " in text
  assert not any(lib in text for lib in LIBRARY_FLAGS)


@pytest.mark.parametrize("args", [["-h"], ["-?"], ["--helpshort"], ["nonsense", "--help"]])
def test_other_help_spellings_and_unknown_commands_print_the_top_level_help(args, capsys):
  assert _help(capsys, *args).startswith("gkd-jax: ")


def test_help_after_other_flags_and_not_after_double_dash(capsys):
  assert _help(capsys, "--config=x.py", "plan", "--help").startswith("gkd-jax plan: ")
  assert main.help_requested(["gkd-jax", "sample", "--", "--help"]) is None
  assert main.help_requested(["gkd-jax", "sample", "--json"]) is None


def test_the_installed_command_prints_it():
  """The console script, start to end (absl's app.run would print its own 'USAGE: ... [flags]')."""
  exe = os.path.join(os.path.dirname(sys.executable), "gkd-jax")
  if not os.path.exists(exe):
    pytest.skip("gkd-jax is not installed beside this Python")
  for args, first in ((["--help"], "gkd-jax: "), (["train", "--help"], "gkd-jax train: ")):
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.startswith(first) and not r.stderr, r
