"""Metric writers (JSONL + TensorBoard), resume behaviour, progress bar and plots."""

import glob
import io
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from gkd_jax import metrics


def _tb_scalars(logdir):
  """Reads TensorBoard event files (TFRecord framing + Event protos): {tag: [(step, value)]}."""
  from tensorboardX.proto import event_pb2

  out = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      buf = f.read()
    pos = 0
    while pos < len(buf):
      (length,) = struct.unpack("<Q", buf[pos : pos + 8])
      event = event_pb2.Event.FromString(buf[pos + 12 : pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def test_jsonl_and_tensorboard(tmp_path):
  rng = np.random.default_rng(0)
  rows = [
      (
          s,
          {
              "loss": float(rng.normal()),
              "divergence": np.float32(rng.random()),
              "acc": jnp.asarray(rng.random(), jnp.float32),
              "note": "hi",
          },
      )
      for s in (1, 2, 5)
  ]
  with metrics.MetricWriter(str(tmp_path), process_index=0) as w:
    for step, m in rows:
      w.write(step, m)
  got = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in got] == [1, 2, 5]
  for r, (_, m) in zip(got, rows):
    assert r["loss"] == m["loss"]
    assert r["divergence"] == pytest.approx(float(m["divergence"]), rel=1e-7)
    assert r["acc"] == pytest.approx(float(m["acc"]), rel=1e-7)
    assert r["note"] == "hi"
  tb = _tb_scalars(str(tmp_path / "tb"))
  assert set(tb) == {"loss", "divergence", "acc"}
  assert [s for s, _ in tb["loss"]] == [1, 2, 5]
  np.testing.assert_allclose([v for _, v in tb["loss"]], [m["loss"] for _, m in rows], rtol=1e-6)


def test_resume_appends_and_drops_recomputed_steps(tmp_path):
  w = metrics.MetricWriter(str(tmp_path), 0, tensorboard=False)
  for step in range(1, 8):
    w.write(step, {"loss": step / 10})
  w.close()
  # The run was interrupted after step 7; its last checkpoint is step 5.
  w = metrics.MetricWriter(str(tmp_path), 0, resume_step=5, tensorboard=False)
  for step in range(6, 9):
    w.write(step, {"loss": step / 10 + 1})
  w.close()
  got = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in got] == list(range(1, 9))
  assert [r["loss"] for r in got] == [s / 10 for s in range(1, 6)] + [s / 10 + 1 for s in (6, 7, 8)]
  # Without resume_step nothing is dropped.
  w = metrics.MetricWriter(str(tmp_path), 0, tensorboard=False)
  w.write(3, {"loss": 0.0})
  w.close()
  assert len(metrics.read_metrics(str(tmp_path / "metrics.jsonl"))) == 9


def test_only_process_zero_writes(tmp_path):
  w = metrics.MetricWriter(str(tmp_path / "p1"), process_index=1)
  w.write(1, {"loss": 1.0})
  w.close()
  assert not os.path.exists(tmp_path / "p1")


def test_progress_bar_postfix_and_eta():
  out = io.StringIO()
  p = metrics.Progress(100, initial_step=10, keys=("loss", "tokens_per_s"), enabled=True, file=out)
  p.update(11, {"loss": 0.123456, "tokens_per_s": 123456.0, "other": 1.0})
  p.update(20)
  p.bar.refresh()
  assert p.bar.n == 20
  p.close()
  text = out.getvalue()
  assert "20/100" in text and "loss=0.1235" in text and "tokens_per_s=1.23e+05" in text
  assert "other" not in text
  assert "<" in text  # tqdm's elapsed<remaining (ETA)
  silent = io.StringIO()
  q = metrics.Progress(10, enabled=False, file=silent)
  q.update(5, {"loss": 1.0})
  q.close()
  assert silent.getvalue() == ""


def test_plot_metrics(tmp_path):
  import matplotlib.image

  w = metrics.MetricWriter(str(tmp_path), 0, tensorboard=False)
  rng = np.random.default_rng(1)
  for step in range(1, 21):
    w.write(step, {"loss": float(rng.random())})
    if step % 5 == 0:
      w.write(step, {"eval/accuracy": float(rng.random())})
  w.close()
  png = metrics.plot_metrics(
      str(tmp_path / "metrics.jsonl"),
      str(tmp_path / "p" / "m.png"),
      ["loss", "eval/accuracy"],
      title="demo",
  )
  img = matplotlib.image.imread(png)
  assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
  assert img[..., :3].std() > 0.01  # not a blank canvas
  with pytest.raises(ValueError, match="no numeric values for 'missing'"):
    metrics.plot_metrics(str(tmp_path / "metrics.jsonl"), str(tmp_path / "x.png"), ["missing"])
