"""Orbax checkpoints: exact round trips (sharded too), keep-N, resume, data iterator, SIGTERM."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from gkd_jax import checkpoints, data, sharding
from gkd_jax.tasks import arithmetic, asset_dir
from gkd_jax.tokenizers import load_tokenizer


def _mesh(shape):
  return sharding.make_mesh(
      dict(zip(("data", "fsdp", "tensor"), shape)), jax.devices()[: int(np.prod(shape))]
  )


def _state(seed, mesh):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(8, 6)).astype(np.float32)
  b = rng.normal(size=(6,)).astype(np.float32)
  return {
      "step": jnp.asarray(seed, jnp.int32),
      "params": {
          "w": jax.device_put(w, NamedSharding(mesh, P(("data", "fsdp"), None))),
          "b": jax.device_put(jnp.asarray(b, jnp.bfloat16), NamedSharding(mesh, P())),
      },
      "opt_state": [jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)],
  }


def _abstract(state, mesh):
  """Restore targets on another mesh: w sharded over its second dim this time."""
  specs = {"step": P(), "params": {"w": P(None, "tensor"), "b": P("fsdp")}, "opt_state": [P()]}
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, s)),
      state,
      specs,
      is_leaf=lambda x: isinstance(x, P) or hasattr(x, "shape"),
  )


@pytest.mark.parametrize("async_save", [False, True])
def test_round_trip_exact_onto_another_mesh(tmp_path, async_save):
  state = _state(3, _mesh((2, 2, 2)))
  manager = checkpoints.make_manager(tmp_path / "ckpt", keep=2, save_every=1, async_save=async_save)
  assert checkpoints.restore_latest(manager, _abstract(state, _mesh((1, 2, 2)))) is None
  assert checkpoints.save(manager, 7, state)
  manager.wait_until_finished()
  target_mesh = _mesh((1, 2, 2))
  step, restored = checkpoints.restore_latest(manager, _abstract(state, target_mesh))
  assert step == 7
  for want, got, spec in zip(
      jax.tree.leaves(state),
      jax.tree.leaves(restored),
      jax.tree.leaves(_abstract(state, target_mesh)),
  ):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    assert got.sharding == spec.sharding
  assert restored["params"]["w"].addressable_shards[0].data.shape == (8, 3)


def test_keep_n_interval_and_latest(tmp_path):
  mesh = _mesh((1, 1, 1))
  manager = checkpoints.make_manager(tmp_path / "ckpt", keep=2, save_every=2, async_save=True)
  for step in range(1, 8):
    checkpoints.save(manager, step, _state(step, mesh))
  manager.wait_until_finished()
  assert manager.all_steps() == [4, 6]  # every 2nd step, newest 2 kept
  assert checkpoints.save(manager, 7, _state(7, mesh), force=True)  # e.g. on SIGTERM
  assert not checkpoints.save(manager, 7, _state(7, mesh), force=True)  # already there
  manager.wait_until_finished()
  assert manager.all_steps() == [6, 7]
  # An interrupted save (a temporary directory Orbax never finalised) is never restored.
  junk = tmp_path / "ckpt" / "9.orbax-checkpoint-tmp-1234"
  junk.mkdir()
  (junk / "garbage").write_text("x")
  fresh = checkpoints.make_manager(tmp_path / "ckpt", keep=2, save_every=2)  # a restarted run
  step, restored = checkpoints.restore_latest(fresh, checkpoints.abstract_like(_state(0, mesh)))
  assert step == 7 and int(restored["step"]) == 7
  np.testing.assert_array_equal(
      np.asarray(restored["params"]["w"]), np.asarray(_state(7, mesh)["params"]["w"])
  )


def test_data_iterator_saved_with_state(tmp_path):
  tok = load_tokenizer(asset_dir("arithmetic"))
  path = str(tmp_path / "d.jsonl")
  arithmetic.write_jsonl(path, arithmetic.generate_examples(20, seed=0))
  make = lambda: iter(
      data.make_loader(
          path,
          tok,
          batch_size=4,
          max_prompt_len=16,
          max_completion_len=8,
          seed=2,
          shard_index=0,
          shard_count=1,
      )
  )
  it = make()
  state = {"x": jnp.arange(4.0)}
  manager = checkpoints.make_manager(tmp_path / "ckpt", keep=3, save_every=1)
  for step in range(1, 8):
    next(it)
    checkpoints.save(manager, step, state, it)
  want = [next(it) for _ in range(4)]
  manager.wait_until_finished()
  resumed = make()
  step, _ = checkpoints.restore_latest(manager, checkpoints.abstract_like(state), resumed)
  assert step == 7
  for w in want:
    g = next(resumed)
    for k in w:
      np.testing.assert_array_equal(w[k], g[k])
  # A checkpoint written without the iterator cannot resume one.
  other = checkpoints.make_manager(tmp_path / "ckpt2", keep=1)
  checkpoints.save(other, 1, state)
  with pytest.raises(ValueError, match="no data iterator state"):
    checkpoints.restore_latest(other, checkpoints.abstract_like(state), make())


LOOP = textwrap.dedent("""
    import sys, time
    import jax.numpy as jnp
    from gkd_jax import checkpoints
    manager = checkpoints.make_manager(sys.argv[1], keep=2, save_every=1000, async_save=True)
    state = {"w": jnp.zeros((4,), jnp.float32)}
    restored = checkpoints.restore_latest(manager, checkpoints.abstract_like(state))
    step = 0 if restored is None else restored[0]
    if restored is not None:
      state = restored[1]
    with checkpoints.PreemptionGuard() as guard:
      while step < 10_000:
        state = {"w": state["w"] + 1.0}
        step += 1
        print(f"step {step}", flush=True)
        checkpoints.save(manager, step, state)
        if guard.should_stop(step):
          checkpoints.save(manager, step, state, force=True)
          manager.wait_until_finished()
          print(f"saved {step}", flush=True)
          sys.exit(0)
        time.sleep(0.02)
    sys.exit(3)
""")


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  script = tmp_path / "loop.py"
  script.write_text(LOOP)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.Popen(
      [sys.executable, str(script), str(tmp_path / "ckpt")],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  try:
    for line in proc.stdout:
      if line.startswith("step 5"):
        break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 0, err[-2000:]
  saved = int(out.strip().splitlines()[-1].split()[1])
  assert saved >= 5
  manager = checkpoints.make_manager(tmp_path / "ckpt", keep=2, save_every=1000)
  abstract = {
      "w": jax.ShapeDtypeStruct(
          (4,), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])
      )
  }
  step, state = checkpoints.restore_latest(manager, abstract)
  assert step == saved
  np.testing.assert_array_equal(np.asarray(state["w"]), np.full((4,), float(saved)))


def test_guard_restores_previous_handler():
  before = signal.getsignal(signal.SIGTERM)
  with checkpoints.PreemptionGuard() as guard:
    assert not guard.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.time() + 5
    while not guard.stop_requested and time.time() < deadline:
      time.sleep(0.01)
    assert guard.should_stop(2)
  assert signal.getsignal(signal.SIGTERM) == before


def test_guard_sync_every_only_delays_multi_process_checks():
  # One process: its own flag is checked at every step whatever sync_every is (no collective).
  with checkpoints.PreemptionGuard(sync_every=4) as guard:
    assert not guard.should_stop(1)
    guard.request_stop()
    assert guard.should_stop(1) and guard.should_stop(3)
  with pytest.raises(ValueError, match="sync_every=0"):
    checkpoints.PreemptionGuard(sync_every=0)
