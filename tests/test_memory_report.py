"""`gkd-jax plan --explain`: the buffers live at a compiled program's peak, from XLA's own dumps.

The readers on a committed dump (tests/fixtures/xla_dump, made by make_xla_dump_fixture.py: a
tiny FSDP gradient step for a 4-chip v5p), then whole plans compiled for a v5p slice (libtpu).
"""

import os
import runpy

import pytest

from gkd_jax import memory_report, plan, xla_dump
from tpu_helpers import tpu_devices, write_model_config

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "xla_dump")
MIB = 2**20


def _read(kind):
  with open(xla_dump.find_module(FIXTURE, "jit_loss")[kind]) as f:
    return f.read()


def test_readers_on_a_real_dump():
  schedule, ranges = xla_dump.parse_live_ranges(_read("live_range"))
  assert schedule[0] == "param" and schedule[-1] == "all-reduce" and len(schedule) == 16
  assert ranges["param.1{}"] == (0, 16) and ranges["all-reduce{}"] == (15, 16)
  values, allocations = xla_dump.parse_buffer_assignment(_read("buffer_assignment"))
  assert allocations[2] == xla_dump.Allocation(2, 2 * MIB, "parameter", 0, parameter=0)
  assert allocations[7].kind == "temp" and allocations[7].size == 4292640
  assert allocations[9].color == 1  # on-chip VMEM: not counted
  assert values["all-gather.3{}"] == xla_dump.Value(
      "all-gather.3{}", 7, 16384, 4 * MIB, "bf16[1024,2048]"
  )
  assert values["copy-start{0}"].shape == "bf16[256,2048]"
  hlo = xla_dump.parse_hlo(_read("hlo"))
  params = {
      hlo.instructions[n].op_name: p for (c, p), n in hlo.parameters.items() if c == hlo.entry
  }
  assert params == {"params": 0, "teacher_params": 1, "x_BxD": 2}
  assert hlo.instructions["all-gather.1"].operands == ("convert",)
  fusion = hlo.instructions["convolution_tanh_fusion"]
  assert fusion.op_name == "jit(loss)/jvp()/dot_general"
  assert any(f == "loss" for _, f, _ in hlo.stack(fusion.frame))


def test_gathered_weights_trace_back_to_their_parameter():
  hlo = xla_dump.parse_hlo(_read("hlo"))
  # student: f32 param -> convert (bf16) -> all-gather; teacher: param -> prefetch copy -> all-gather
  assert memory_report.trace_weight(hlo, "all-gather.1") == ("params", True)
  assert memory_report.trace_weight(hlo, "all-gather.3") == ("teacher_params", True)
  assert memory_report.trace_weight(hlo, "convert") == ("params", False)
  assert memory_report.trace_weight(hlo, "convolution_tanh_fusion")[0] is None  # a matmul
  category = lambda name: memory_report.category(hlo, hlo.instructions[name], "", "temp")
  assert category("all-gather.3") == "gathered teacher weights"
  assert category("convert") == "student weight copies"
  assert category("fusion") == "backward (gradients, temporaries)"


def test_report_counts_shared_bytes_once():
  report = memory_report.explain(FIXTURE, "jit_loss")
  # The most is live at the gradient's last matmul (step 14): the gradient's fusion, which shares
  # one output buffer with the all-reduce after it (in place: counted once), the arguments, and the
  # teacher's bf16 matmul output that the backward still needs (grouped as student forward: the
  # fixture's `loss` is not one of TEACHER_FRAMES, and the name stack cannot tell them apart).
  assert report.peak_at.startswith("fusion (jit(loss)/transpose(jvp())/dot_general)")
  assert [(b.instruction, b.size) for b in report.buffers] == [
      ("fusion{}", 8 * MIB),
      ("param.1{}", 2 * MIB),
      ("param.2{}", 1 * MIB),
      ("param{}", 64 * 1024),
      ("fusion.8{}", 64 * 1024),
  ]
  assert report.groups == {
      "backward (gradients, temporaries)": 8 * MIB,
      "student params": 2 * MIB,
      "teacher params": 1 * MIB,
      "arguments (other)": 64 * 1024,
      "student forward (kept for backward)": 64 * 1024,
  }
  assert report.live_bytes == sum(report.groups.values()) and report.count == 5
  assert report.counts == dict.fromkeys(report.groups, 1)
  assert report.temp_allocation == 4292640
  text = memory_report.format_report(report)
  assert "backward (gradients, temporaries)" in text and "bf16[256,2048]" in text


def test_absent_or_malformed_dump_says_why(tmp_path):
  with pytest.raises(xla_dump.DumpError, match="compiler_options"):
    memory_report.explain(str(tmp_path), "jit_train_step")
  with pytest.raises(xla_dump.DumpError, match="BufferLiveRange"):
    xla_dump.parse_live_ranges("HloLiveRange (max 3):\n")
  with pytest.raises(xla_dump.DumpError, match="allocation"):
    xla_dump.parse_buffer_assignment("BufferAssignment:\n")
  assert "did not compile" in memory_report.format_report(None)


def test_strip_layout_and_vocab_shards():
  assert xla_dump.strip_layout("bf16[8,128]{1,0:T(8,128)(2,1)}") == "bf16[8,128]"
  assert xla_dump.strip_layout("f32[]{:T(128)S(1)}") == "f32[]"

  class Mesh:
    shape = {"data": 1, "fsdp": 2, "tensor": 4}

  assert memory_report.vocab_shards(256000, Mesh()) == (64000, 256000)


# ---- whole programs compiled for a 4-chip v5p slice ------------------------------------------------


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  """Llama-like student with 128-wide heads and a long eval generation, so that the sampler's KV
  cache ([B/4, K=2, S=1024, 128] f32 per layer and per K/V: 2 MiB each) dominates its peak."""
  d = tmp_path_factory.mktemp("explain")
  student = write_model_config(
      d / "student", "tiny_llama", head_dim=128, num_attention_heads=2, num_key_value_heads=2
  )
  teacher = write_model_config(d / "teacher", "tiny_llama", num_hidden_layers=3)
  path = d / "config.py"
  path.write_text(f"""
from configs import default
def get_config():
  c = default.get_config()
  c.student.path, c.teacher.path = {student!r}, {teacher!r}
  c.data.train_path = "/not/needed/by/a/plan.jsonl"
  c.data.max_prompt_len = c.data.max_completion_len = 16
  c.sampling.max_new_tokens = 16
  c.eval.max_new_tokens = 1008  # prompt 16 + 1008 = 1024 cache slots
  c.gkd.lmbda, c.gkd.loss = 0.5, "jsd"
  c.train.batch_size = c.eval.batch_size = 8
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  return c
""")
  return runpy.run_path(str(path))["get_config"]()


@pytest.fixture(scope="module")
def plans(config):
  return plan.plan_steps(
      config, list(tpu_devices("v5p:2x2x1")), only=("train_step", "sampler"), explain=True
  )


@pytest.mark.parametrize("program", ["train_step", "sampler"])
def test_peak_buffers_agree_with_xla_memory_analysis(plans, program):
  p = plans[program]
  r = p.explain
  assert r is not None and r.count >= len(r.buffers) > 0
  assert sum(r.groups.values()) == r.live_bytes
  # Every live value sits in an argument, output or temporary allocation, each byte counted once:
  # together no more than XLA's peak (arguments + outputs - aliased + temporaries), and the
  # buffer assignment's temporaries are within XLA's temporaries.
  assert r.live_bytes <= p.peak_bytes
  assert r.temp_allocation <= p.temp_bytes
  args = sum(size for name, size in r.groups.items() if name.endswith(("params", "state")))
  assert args <= p.argument_bytes
  # At these sizes most of XLA's peak is found buffer by buffer (tiny buffers are padded to 16 KiB
  # in the heap, which the live sizes do not count).
  assert r.live_bytes >= 0.5 * p.peak_bytes if program == "sampler" else r.live_bytes > 0


def test_sampler_kv_cache_is_found_with_its_size(plans):
  r = plans["sampler"].explain
  cache = [b for b in r.buffers if b.category == "KV cache" and b.size > 64 * 1024]
  # 2 layers x (keys, values), each [B/4=2, K=2, S=1024, Dh=128] in float32 (the student's dtype):
  # four [2,2,1024,128] buffers (looped decoder) or two [L=2,2,2,1024,128] (scanned)
  assert sum(b.size for b in cache) == 4 * (2 * 2 * 1024 * 128 * 4)
  assert all(
      b.shape.startswith("f32[") and b.shape.endswith(",2,2,1024,128]") for b in cache
  ) or all(b.shape == "f32[2,2,1024,128]" for b in cache)
  assert 4 * 2 * MIB <= r.groups["KV cache"] < 4 * 2 * MIB + 64 * 1024  # + the slot indices
  assert max(r.groups, key=r.groups.get) == "KV cache"
  # Made by the sampler, or the decode loop's own parameter (which names no source line).
  assert all("sampling.py" in b.source or b.opcode == "parameter" for b in cache)


def test_train_step_groups_params_by_owner(plans):
  r = plans["train_step"].explain
  params = [b for b in r.buffers if b.opcode == "parameter" and b.what]  # the entry's
  assert params and all(
      b.category
      == {"state.params": "student params", "teacher_params": "teacher params"}.get(
          b.what.split("[")[0], "optimizer state" if "opt_state" in b.what else "arguments (other)"
      )
      for b in params
  )
  # The teacher's weights are not donated: live all through the step. The student's state is
  # donated, so its buffers may be reused for the new state before the peak.
  assert "teacher params" in r.groups


def test_plan_prints_the_tables(config, capsys):
  code, summary = plan.plan(config, "v5p:2x2x1", replan=False, explain=True, only=("sampler",))
  out = capsys.readouterr().out
  assert code == 0 and list(summary["steps"]) == ["sampler"]
  assert "sampler: where the memory goes" in out and "KV cache" in out
  assert summary["steps"]["sampler"]["explain"]["groups"]["KV cache"] >= 8 * MIB
