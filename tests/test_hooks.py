"""The hooks of the training loop: when each runs, in which order, and how one stops the loop."""

import jax.numpy as jnp
import pytest

from gkd_jax import hooks


class Record:
  """A hook that records the steps it ran after."""

  def __init__(self, every, at_last=False, name="", log=None, stop_at=None):
    self.every, self.at_last, self.name, self.stop_at = every, at_last, name, stop_at
    self.log = [] if log is None else log

  def __call__(self, info):
    self.log.append((self.name, info.step))
    if info.step == self.stop_at:
      info.stop = True


def _run(hook_list, num_steps):
  """The loop's hook calls for steps 1..num_steps (until a hook stops it)."""
  chain = hooks.Hooks(after_step=hook_list)
  for step in range(1, num_steps + 1):
    info = hooks.StepInfo(step, num_steps, state=None)
    chain.run(info)
    if info.stop:
      return step
  return num_steps


@pytest.mark.parametrize(
    "every, at_last, want",
    [(1, False, [1, 2, 3, 4, 5, 6, 7]), (3, False, [3, 6]), (3, True, [3, 6, 7]), (0, True, [7])],
)
def test_a_hook_runs_at_multiples_of_every_and_after_the_last_step(every, at_last, want):
  hook = Record(every, at_last)
  _run([hook], 7)
  assert [step for _, step in hook.log] == want


def test_hooks_run_in_list_order_and_one_can_stop_the_loop():
  log = []
  first = Record(1, name="first", log=log, stop_at=2)
  second = Record(2, name="second", log=log)
  assert _run([first, second], 5) == 2
  assert log == [("first", 1), ("first", 2), ("second", 2)]


def test_at_end_hooks_run_once_in_order():
  log = []
  chain = hooks.Hooks(at_end=[lambda info: log.append(("a", info.step)), lambda i: log.append("b")])
  chain.end(hooks.StepInfo(4, 4, state=None))
  assert log == [("a", 4), "b"]


def test_teacher_sums_are_token_means_since_the_last_take():
  sums = hooks.TeacherSums()
  for teacher, n, d in [("a", 2.0, 1.0), ("b", 4.0, 0.5), ("a", 6.0, 3.0), (None, 8.0, 9.0)]:
    m = {"num_tokens": jnp.float32(n), "divergence": jnp.float32(d)}
    sums(hooks.StepInfo(1, 4, state=None, metrics=m, teacher=teacher))
  assert sums.take() == {
      "teacher/a/num_tokens": 8.0,
      "teacher/a/divergence": (2 * 1.0 + 6 * 3.0) / 8,
      "teacher/b/num_tokens": 4.0,
      "teacher/b/divergence": 0.5,
  }
  assert sums.take() == {}
