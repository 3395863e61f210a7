"""Several teachers (`config.teachers`): each record is distilled from the teacher it names, every
batch holds one teacher's records so a step runs that teacher only, and one entry is the single
`teacher` run bit for bit."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import arithmetic
from gkd_jax import batches, data, programs, testing, train
from gkd_jax.tokenizers import load_tokenizer


def _entry(path, weight=1.0):
  return ml_collections.ConfigDict(dict(path=str(path), dtype="float32", weight=weight))


def _write(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  return str(path)


def _named(src, dst, name_of):
  """A copy of the JSONL `src` whose record i names teacher `name_of(i)` (None: no name)."""
  records = data.read_jsonl_records(src)
  return _write(
      dst,
      [
          dict(r, **({} if name_of(i) is None else {"teacher": name_of(i)}))
          for i, r in enumerate(records)
      ],
  )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("multi_teacher")
  base = arithmetic.get_config()
  return dict(
      dir=d,
      student=testing.save_tiny_llama(d / "student", seed=1, num_layers=1),
      a=testing.save_tiny_llama(d / "teacher_a", seed=2, num_layers=2),
      b=testing.save_tiny_llama(d / "teacher_b", seed=3, num_layers=1),
      # every third record is b's; the rest name a or (every fifth) nobody: default_teacher
      train=_named(
          base.data.train_path,
          d / "train.jsonl",
          lambda i: "b" if i % 3 == 0 else None if i % 5 == 0 else "a",
      ),
      eval=_named(base.data.eval_path, d / "eval.jsonl", lambda i: "ab"[i % 2]),
  )


def _config(files, **teachers):
  c = arithmetic.get_config()
  c.student.path, c.teacher.path = files["student"], ""
  for name, entry in teachers.items():
    c.teachers[name] = entry
  c.default_teacher = "a" if len(teachers) > 1 else ""
  c.data.train_path, c.data.eval_path = files["train"], files["eval"]
  c.gkd.lmbda, c.gkd.loss, c.gkd.beta = 0.5, "jsd", 0.3
  c.train.batch_size, c.train.num_steps, c.train.log_every = 8, 6, 1
  c.train.eval_every, c.train.checkpoint_every, c.train.async_checkpoints = 0, 6, False
  c.eval.batch_size, c.eval.num_examples, c.eval.teacher, c.task.name = 8, 32, False, ""
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  return c


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_every_global_batch_holds_one_teachers_records_and_processes_split_them():
  records = [
      {"prompt": f"{i}+1=", "completion": "2", "teacher": "xy"[i % 3 > 0]} for i in range(50)
  ]
  records += [{"prompt": "1+1=", "completion": "2"}] * 10  # default teacher: z
  teacher_R = data.teacher_indices(records, ("x", "y", "z"), "z")
  kw = dict(
      batch_size=4, max_prompt_len=4, max_completion_len=2, num_epochs=2, split_global_batches=True
  )
  kw.update(teachers=("x", "y", "z"), default_teacher="z", row_extras=lambda rows: {"rows": rows})
  tok = load_tokenizer(arithmetic.get_config().tokenizer.path)
  one = list(data.make_dataset(records, tok, shard_index=0, shard_count=1, **kw))
  counts = np.bincount(teacher_R)  # x 17, y 33, z 10: 4 + 8 + 2 global batches of 4 per epoch
  assert len(one) == 2 * int(np.sum(counts // 4))
  for batch in one:
    assert len(set(batch["teacher_index"])) == 1
    np.testing.assert_array_equal(batch["teacher_index"], teacher_R[batch["rows"]])
  epoch = np.concatenate([b["rows"] for b in one[: len(one) // 2]])
  assert len(set(epoch)) == len(epoch)  # no record twice in an epoch
  two = [list(data.make_dataset(records, tok, shard_index=p, shard_count=2, **kw)) for p in (0, 1)]
  kw["batch_size"] = 8
  global_ = list(data.make_dataset(records, tok, shard_index=0, shard_count=1, **kw))
  assert len(two[0]) == len(two[1]) == len(global_)
  for p0, p1, g in zip(*two, global_):
    np.testing.assert_array_equal(np.concatenate([p0["rows"], p1["rows"]]), g["rows"])


def test_a_record_naming_no_configured_teacher_is_refused():
  with pytest.raises(ValueError, match=r"record 2 of the data has teacher='w', not one of"):
    data.teacher_indices([{"teacher": "x"}, {"teacher": "w"}], ("x", "y"), None)
  with pytest.raises(ValueError, match="teacher=None"):
    data.teacher_indices([{"prompt": "p"}], ("x", "y"), None)


def test_each_batch_is_scored_by_its_own_teacher_exactly_as_a_single_teacher_run(files):
  """The routed run's loss at every step equals the single-teacher step of that batch's teacher
  on the same state and batch; each teacher runs only on its batches."""
  multi = _config(files, a=_entry(files["a"]), b=_entry(files["b"], weight=0.5))
  train.train(multi, str(files["dir"] / "multi"))
  logged = {r["step"]: r for r in _metrics(files["dir"] / "multi") if "loss" in r}
  # Replay: the same batches, each through the one-teacher run of its teacher.
  run = train.build(multi)
  loader = iter(
      batches.loader(run, multi.data.train_path, batch_size=8, shuffle=True, num_epochs=-1)
  )
  singles = {}
  for name, weight in (("a", 1.0), ("b", 0.5)):
    single = _config(files, only=_entry(files[name], weight))
    srun = train.build(single)
    singles[name] = (srun, programs.compile_steps(srun))
  state = singles["a"][1].init_state(singles["a"][0].params)
  seen = set()
  for step in range(1, 7):
    local = next(loader)
    name = "ab"[int(local.pop("teacher_index")[0])]
    seen.add(name)
    srun, steps = singles[name]
    batch = batches.global_batch(srun, local)
    state, m = steps.train_step(state, srun.teacher_params, batch, jax.random.key(multi.seed))
    assert float(m["loss"]) == logged[step]["loss"]
    assert logged[step][f"teacher/{name}/num_tokens"] == float(m["num_tokens"])
    assert logged[step][f"teacher/{name}/divergence"] == pytest.approx(float(m["divergence"]))
    other = "ba"[name == "b"]
    assert f"teacher/{other}/num_tokens" not in logged[step]
  assert seen == {"a", "b"}
  final = [r for r in _metrics(files["dir"] / "multi") if "eval/teacher/a/divergence" in r]
  assert final and "eval/teacher/b/divergence" in final[-1]


def test_one_entry_in_teachers_is_the_single_teacher_run_bit_for_bit(files):
  def config(**teachers):
    c = _config(files, **teachers)
    for split in ("train", "eval"):
      path = _named(files[split], files["dir"] / f"only_{split}.jsonl", lambda i: "only")
      setattr(c.data, f"{split}_path", path)
    return c

  single = config()
  single.teacher.path, single.teacher.dtype = files["a"], "float32"
  train.train(single, str(files["dir"] / "single"))
  train.train(config(only=_entry(files["a"])), str(files["dir"] / "one_entry"))

  def values(workdir):  # all but wall times
    return [
        {k: v for k, v in r.items() if k not in ("step_time_s", "tokens_per_s")}
        for r in _metrics(files["dir"] / workdir)
    ]

  assert values("one_entry") == values("single")


def test_every_teacher_must_share_the_students_vocabulary(files):
  other = testing.save_tiny_llama(files["dir"] / "teacher_v64", seed=4, vocab_size=64)
  config = _config(files, a=_entry(files["a"]), b=_entry(other))
  with pytest.raises(
      ValueError, match=r"teachers\.b vocabulary \(64, .*\) differs from the student's \(32\)"
  ):
    train.build(config)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: setattr(c.teacher, "path", c.teachers.a.path), "are both set"),
        (lambda c: c.teachers.b.__delitem__("weight"), r"teachers\.b\.weight is missing"),
        (lambda c: setattr(c.teachers.b, "dtype", "float16"), r"teachers\.b\.dtype='float16'"),
        (lambda c: setattr(c, "default_teacher", "c"), "default_teacher='c' is not one of"),
        (lambda c: setattr(c.gkd, "teacher_cache", c.teachers.a.path), "a cache holds one teacher"),
    ],
)
def test_bad_teachers_are_refused_in_one_line(files, change, message):
  config = _config(files, a=_entry(files["a"]), b=_entry(files["b"]))
  change(config)
  with pytest.raises(ValueError, match=message):
    train.build(config)


def test_plan_refuses_several_teachers_in_one_line(files):
  from gkd_jax import plan  # pylint: disable=import-outside-toplevel

  config = _config(files, a=_entry(files["a"]), b=_entry(files["b"]))
  with pytest.raises(ValueError, match=r"teachers \(a, b\): a plan compiles one teacher's step"):
    plan.abstract_run(config, jax.devices())
