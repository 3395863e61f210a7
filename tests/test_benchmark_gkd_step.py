"""The gkd_jax side of benchmarks/gkd_step_vs_trl.py (no torch needed) and profile_step's parser."""

import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gkd_jax import divergences, score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gkd_step_vs_trl as bench  # noqa: E402  pylint: disable=wrong-import-position
import profile_step  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture
def tiny(monkeypatch):
  small = dict(
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=1,
      num_attention_heads=2,
      num_key_value_heads=1,
      head_dim=16,
      query_pre_attn_scalar=16,
  )
  monkeypatch.setattr(bench, "VOCAB", 64)
  monkeypatch.setattr(bench, "STUDENT", dict(bench.STUDENT, vocab_size=64, **small))
  monkeypatch.setattr(bench, "TEACHER", dict(bench.TEACHER, vocab_size=64, **small))
  return SimpleNamespace(batch=2, prompt_len=3, new_tokens=4, lr=1e-3, beta=0.5, dtype="float32")


def test_gkd_jax_side_update_loss_is_the_dense_jsd_of_both_checkpoints(tiny, tmp_path):
  paths = bench.write_checkpoints(tmp_path)
  side = bench.GkdJaxSide(tiny, paths, devices=jax.devices()[:1], remat=False)  # compiles lazily
  params0 = jax.tree.map(jnp.copy, side.state.params)  # the step donates the state
  loss = side.op("update")["loss"]
  # Independent: dense JSD(0.5) of the two models' logits at the completion positions.
  arrays = bench.batch_arrays(tiny.batch, tiny.prompt_len, tiny.new_tokens)
  tokens = jnp.asarray(np.concatenate([arrays["prompt"], arrays["completion"]], 1), jnp.int32)
  p = tiny.prompt_len
  zs = score(side.run.student, params0, tokens)[:, p - 1 : -1]
  zt = score(side.run.teacher, side.run.teacher_params, tokens)[:, p - 1 : -1]
  want = float(jnp.mean(divergences.token_divergence(zs, zt, kind="jsd", beta=0.5)))
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_op_times_sums_thunks_of_one_module_and_skips_control_flow():
  ev = lambda op, dur, module="jit_train_step": dict(
      ph="X", dur=dur, args=dict(hlo_op=op, hlo_module=module)
  )
  events = [
      ev("fusion.1", 5.0),
      ev("fusion.1", 7.0),
      ev("while.3", 100.0),
      ev("dot.2", 1.5),
      ev("fusion.1", 50.0, module="jit_other"),
      dict(ph="X", dur=9.0, name="python"),
      dict(ph="M", name="thread_name"),
  ]
  assert profile_step.op_times(events, "jit_train_step") == {
      "fusion.1": (12.0, 2),
      "dot.2": (1.5, 1),
  }


def test_hlo_index_reads_opcode_shape_and_op_name():
  text = jax.jit(lambda x: jnp.tanh(x @ x.T).sum()).lower(jnp.ones((8, 8))).compile().as_text()
  index = profile_step.hlo_index(text)
  roots = [v for v in index.values() if "reduce_sum" in v[2]]
  assert roots and all(v[2].startswith(("jit(<lambda>)", "reduce_sum")) for v in roots)
  assert any(
      v[0] in ("fusion", "dot", "custom-call") and v[1].startswith("f32[8,8]")
      for v in index.values()
  )


def test_floor_counts_at_least_the_models_matmuls_and_measures_a_matmul_rate(tiny, tmp_path):
  paths = bench.write_checkpoints(tmp_path)
  side = bench.GkdJaxSide(tiny, paths, devices=jax.devices()[:1], remat=False)
  floor = side.floor()
  # Lower bound: the layer matmuls at the positions every layer computes (the B x (N+1) that
  # predict the completion; 2 FLOPs per multiply-add), the teacher's forward and the student's
  # forward + backward (3x), a part of what the update must compute.
  weights = lambda params: sum(
      int(np.prod(x.shape)) for x in jax.tree.leaves(params["layers"]) if x.ndim >= 2
  )
  positions = tiny.batch * (tiny.new_tokens + 1)
  need = 2 * positions * (weights(side.run.teacher_params) + 3 * weights(side.state.params))
  assert floor["update_flops"] >= need
  # Sampling: the student's layers and unembedding at those positions, and less than the update
  # (which also runs the teacher and the student's backward).
  cfg = side.run.student.config
  need = 2 * positions * (weights(side.state.params) + cfg.embed_dim * cfg.vocab_size)
  assert need <= floor["sample_flops"] < floor["update_flops"]
  B, P, N = tiny.batch, tiny.prompt_len, tiny.new_tokens
  assert floor["matmul"] == [B * (P + N), 32, 64] and 1 < floor["matmul_gflops"] < 1e5
  assert side.op("update_matmuls")["s"] > 0 and side.op("sample_matmuls")["s"] > 0


def test_matmul_floor_replicas_count_the_models_weight_matmuls():
  import matmul_floor  # pylint: disable=import-outside-toplevel
  from gkd_jax import testing  # pylint: disable=import-outside-toplevel

  # Two different shapes (Llama: every layer full attention, so any layer count works).
  student = testing.tiny_config("llama", num_layers=2, vocab_size=64)
  teacher = testing.tiny_config(
      "llama", num_layers=3, vocab_size=64, embed_dim=48, mlp_dim=80, head_dim=12
  )
  B, P, N = 2, 3, 4

  def forward(c, rows, kept):  # 2 FLOPs per multiply-add; the last layer past k, v on `kept`
    D, F, Q, KV = c.embed_dim, c.mlp_dim, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    kv, rest = 2 * D * KV, 2 * D * Q + 3 * D * F
    layers = (c.num_layers - 1) * rows * (kv + rest) + rows * kv + kept * rest
    return 2 * (layers + kept * D * c.vocab_size)

  # The update: teacher forward + student forward and backward (dW and dx: 3x the forward).
  # Sampling: XLA counts a loop body once, so prefill + one decode step.
  want = dict(
      update=forward(teacher, B * (P + N), B * N) + 3 * forward(student, B * (P + N), B * N),
      sample=forward(student, B * P, B) + forward(student, B, B),
  )
  for name, (fn, args) in matmul_floor.programs(student, teacher, B, P, N).items():
    cost = fn.lower(*args).compile().cost_analysis()
    flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
    # Elementwise products add a little; a missing or untrimmed matmul moves it by more.
    assert 0.99 * want[name] <= flops <= 1.05 * want[name], (name, flops, want[name])


def test_floor_section_states_each_half_and_the_ceiling_from_the_measurements():
  import gkd_step_report as report  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng()
  rate, flops_u, flops_s = rng.uniform(50, 300), rng.uniform(1e10, 9e10), rng.uniform(1e9, 9e9)
  ops = ("trl_step", "update", "sample", "mm_update", "mm_sample")
  times = {op: rng.uniform(0.05, 2.0) for op in ops}
  med = lambda t: dict(median=t)
  cell = dict(
      gkd_jax=dict(
          floor=dict(
              matmul=[4, 5, 6],
              matmul_gflops=rate,
              update_flops=flops_u,
              sample_flops=flops_s,
          ),
          times=dict(
              update=med(times["update"]),
              sample=med(times["sample"]),
              update_matmuls=med(times["mm_update"]),
              sample_matmuls=med(times["mm_sample"]),
          ),
      ),
      trl=dict(
          floor=dict(matmul_gflops=rng.uniform(50, 300)), times=dict(step=med(times["trl_step"]))
      ),
  )
  text = "\n".join(report._floor(cell))  # pylint: disable=protected-access
  u_s, s_s = flops_u / 1e9 / rate, flops_s / 1e9 / rate
  assert f"| {u_s:.3f} s | {s_s:.3f} s |" in text
  assert f"as measured): {times['trl_step'] / (u_s + times['sample']):.2f};" in text
  assert f"both halves at the matmul rate: {times['trl_step'] / (u_s + s_s):.2f}," in text
  assert f"| {times['mm_update']:.3f} s | {times['mm_sample']:.3f} s |" in text
  mm = times["trl_step"] / (times["mm_update"] + times["mm_sample"])
  assert f"at XLA's speed for their shapes: {mm:.2f}." in text


def test_real_mode_defaults_are_the_experiments_shapes_and_options_are_checked():
  toy, real = bench.parse_args([]), bench.parse_args(["--real"])
  assert (toy.prompt_len, toy.new_tokens, toy.beta) == (32, 64, 0.5)
  assert (real.batch, real.prompt_len, real.new_tokens, real.beta) == (8, 64, 48, 0.9)
  assert real.out.endswith("gkd_step_vs_trl_smollm2") and toy.out.endswith("gkd_step_vs_trl")
  assert bench.parse_args(["--real", "--beta", "0.5"]).beta == 0.5
  for bad in (["--real", "--scaling"], ["--teacher", "t", "--student", "s"]):
    with pytest.raises(SystemExit):
      bench.parse_args(bad)


def test_real_folders_exit_with_one_line_saying_how_to_make_them(tmp_path, monkeypatch):
  import gkd_step_smollm2 as smollm2  # pylint: disable=import-outside-toplevel
  from gkd_jax import released  # pylint: disable=import-outside-toplevel

  for module, name in ((smollm2, "DEMO"), (smollm2, "CACHE"), (released, "CACHE")):
    monkeypatch.setattr(module, name, tmp_path / name.lower())
  with pytest.raises(SystemExit, match="make models"):
    smollm2.folders()

  with pytest.raises(SystemExit, match="give both"):
    smollm2.folders(teacher=str(tmp_path))
  with pytest.raises(SystemExit, match="no config.json"):
    smollm2.folders(str(tmp_path), str(tmp_path))
