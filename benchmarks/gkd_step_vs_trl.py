"""One GKD training step, gkd_jax vs TRL's GKDTrainer, on the same CPU, weights and batch.

Setup (both sides): random Gemma-2-architecture weights written once as HF checkpoints with
`gkd_jax.save_pretrained` (plus a word-level tokenizer.json) and loaded by both: student
256 wide x 4 layers (4 heads x 64, 2 KV heads, GeGLU 1024), teacher 512 x 6 (8 heads x 64, 4 KV
heads, GeGLU 2048), V=4096, tied embeddings, attention/final soft-caps 50/30, alternating
sliding (window 4096) / full layers. Batch 8 of 32-token random prompts (no padding), exactly 64
new tokens (no early stop), λ=1 (always on-policy), JSD β=0.5, temperature 1 (sampling and loss),
AdamW (lr 1e-4, constant, no weight decay, global-norm clip 1.0), float32.

gkd_jax side: the trainer's own path, `train.build(config)` + `programs.compile_steps(run)`
from configs/default.py with the settings above (its defaults otherwise, e.g. train.remat and
gkd.kernel_impl), with `settings.eos_id = ()` so no sampled id ends a row. The split is timed as
two separately jitted programs: `gkd_jax.sample` alone (as `train_step` calls it) and the same
`train_step` with λ=0 on fixed completions (loss + backward + AdamW update, no sampling).

TRL side: a real `trl.experimental.gkd.GKDTrainer` (GKDConfig with the settings above), driven
one update at a time the way transformers' Trainer inner loop does: `trainer.training_step`
(GKDTrainer's: `generate_on_policy_outputs` with the student, then `compute_loss` = full [B,T,V]
logits of both models over prompt+completion and `generalized_jsd_loss`, then backward), then
`trainer._clip_grad_norm`, `optimizer.step()`, `lr_scheduler.step()`, `model.zero_grad()`.
Deviations, all needed for forced lengths or a per-token mean: `generation_config.min_new_tokens =
max_new_tokens` (EOS suppressed until the end), `num_items_in_batch=None` (batchmean: the mean
over valid completion tokens, as gkd_jax). Its split: the time inside `generate_on_policy_outputs`
within each step, and separately generate alone and `training_step` with `lmbda=0` on the fixed
completions (the rest). Threads: torch.set_num_threads(--threads); XLA:CPU uses its default pool.

Both sides run in their own persistent processes, set up one after the other (compile / warm-up
timed), then driven alternately over pipes (one op on A, the same op on B, first mover swapped
every round) so they see the same machine load; each round also times, on the gkd_jax side,
sampling in bfloat16 and each half's weight matmuls alone (`matmul_floor.py`: the floor's bound
with everything else free). Before any timing, both compute the loss of step 1
and step 2 (after one AdamW update) on the same fixed completion from the same weights; their
difference shows the two compute the same thing.

  .venv/bin/python benchmarks/gkd_step_vs_trl.py                 # the table above, 10 steps
  .venv/bin/python benchmarks/gkd_step_vs_trl.py --scaling       # batch 8/32/128 x 64/256 tokens
  .venv/bin/python benchmarks/gkd_step_vs_trl.py --dtype bfloat16   # gkd_jax models in bf16
  .venv/bin/python benchmarks/gkd_step_vs_trl.py --real        # SmolLM2-135M -> its 15 layers

--real: the step `make demo` trains (configs/prune_and_distill.py: batch 8, prompts left-padded
to 64, 48 new tokens, JSD β=0.9, train.remat=False) on the real teacher and pruned student and the
trainer's own chat-templated prompts (gkd_step_smollm2.py says which folders and how they are
made); everything else as above. Results: benchmarks/results/gkd_step_vs_trl_smollm2.{md,json}.
Both children stay resident: a 1-round run peaked at 5.7 GB (TRL) + 4.4 GB (gkd_jax) of RSS.

Memory, both sides: each process's peak resident set (Linux VmHWM) while it runs one more step,
sampling alone and the loss + update half alone after set-up (the peak reset before each through
/proc/self/clear_refs, so load and compile peaks are not counted; reported as that peak and the
resident set before it), the lifetime peak until then (load + compile + first calls), and for
gkd_jax XLA's memory analysis of the compiled train_step at λ=1 and λ=0 (arguments + outputs -
aliased + temporaries: the buffers one step needs; resident weights and the optimizer state are
among its arguments).

Needs a venv with torch + transformers + trl (--ref-python, default .refvenv/bin/python; see the
Makefile's fixtures target). Not a test: compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 4096
PAD, EOS, BOS = 0, 1, 2
_GEMMA2 = dict(
    model_type="gemma2",
    vocab_size=VOCAB,
    head_dim=64,
    hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=8192,
    sliding_window=4096,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    query_pre_attn_scalar=64,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    pad_token_id=PAD,
    eos_token_id=EOS,
    bos_token_id=BOS,
)
STUDENT = dict(
    _GEMMA2,
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
)
TEACHER = dict(
    _GEMMA2,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=4,
)


# ---- shared inputs ------------------------------------------------------------------------------


def batch_arrays(batch: int, prompt_len: int, new_tokens: int) -> dict:
  """Random prompts (no padding) and a fixed random completion (ids >= 3: no pad/EOS/BOS), int64
  numpy."""
  rng = np.random.default_rng(0)
  prompt = rng.integers(3, VOCAB, (batch, prompt_len))
  return dict(
      prompt=prompt,
      prompt_mask=np.ones_like(prompt),
      completion=rng.integers(3, VOCAB, (batch, new_tokens)),
  )


def load_arrays(args, paths) -> dict:
  """The batch both children use: the driver's .npz when it wrote one (--real), else random."""
  if "arrays" in paths:
    with np.load(paths["arrays"]) as f:
      return {k: f[k] for k in f.files}
  return batch_arrays(args.batch, args.prompt_len, args.new_tokens)


def write_dummy_train(root: Path) -> str:
  """A one-record train.jsonl: the trainer's build validates a training file (never read here)."""
  (root / "train.jsonl").write_text('{"prompt": "t3", "completion": "t4"}\n')
  return str(root / "train.jsonl")


def write_checkpoints(root: Path) -> dict:
  """Student and teacher HF dirs with random weights (gkd_jax.save_pretrained) and a tokenizer."""
  import jax
  import tokenizers
  import gkd_jax
  from gkd_jax import models
  from gkd_jax.models.hf_config import config_from_hf

  vocab = {"<pad>": PAD, "<eos>": EOS, "<bos>": BOS, **{f"t{i}": i for i in range(3, VOCAB)}}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  paths = {}
  for seed, (name, hf) in enumerate((("student", STUDENT), ("teacher", TEACHER))):
    model = models.build(config_from_hf(hf))
    path = root / name
    gkd_jax.save_pretrained(path, model, models.init(model, jax.random.key(seed)))
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            dict(
                tokenizer_class="PreTrainedTokenizerFast",
                pad_token="<pad>",
                eos_token="<eos>",
                bos_token="<bos>",
                model_max_length=8192,
            )
        )
    )
    paths[name] = str(path)
  paths["train"] = write_dummy_train(root)
  return paths


def mlp_matmul(args, paths) -> tuple[int, int, int]:
  """(M, K, N) of the teacher's MLP up-projection at the benchmark's batch: B·(P+N) tokens x
  width x MLP width (768 x 512 x 2048 for the random Gemma-2 pair), from its config.json."""
  c = json.loads((Path(paths["teacher"]) / "config.json").read_text())
  return (
      args.batch * (args.prompt_len + args.new_tokens),
      c["hidden_size"],
      c["intermediate_size"],
  )


def matmul_rate(shape, torch=None, reps: int = 30) -> dict:
  """GFLOP/s of one float32 [M,K] x [K,N] matmul (`shape`) on this CPU, from the fastest of `reps`
  runs (a ceiling wants the uncontended rate; other jobs only slow runs down): jitted jax, or
  torch when the torch module is given."""
  m, k, n = shape
  if torch is None:
    import jax

    a, b = (jax.random.normal(jax.random.key(i), s) for i, s in enumerate(((m, k), (k, n))))
    f = jax.jit(lambda a, b: a @ b)
    run = lambda: f(a, b).block_until_ready()
  else:
    a, b = torch.randn(m, k), torch.randn(k, n)
    run = lambda: a @ b
  run()
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    run()
    ts.append(time.perf_counter() - t)
  return dict(matmul=list(shape), matmul_gflops=2 * m * k * n / min(ts) / 1e9)


# ---- the gkd_jax side ---------------------------------------------------------------------------


def gkd_jax_config(args, paths):
  """configs/default.py (or paths["config"]: --real's configs/prune_and_distill.py) with the
  benchmark's settings."""
  import importlib.util

  base = paths.get("config", str(ROOT / "configs" / "default.py"))
  spec = importlib.util.spec_from_file_location("base_config", base)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.student.path, c.teacher.path, c.data.train_path = (
      paths["student"],
      paths["teacher"],
      paths["train"],
  )
  c.student.dtype = c.teacher.dtype = args.dtype
  c.data.max_prompt_len, c.data.max_completion_len = args.prompt_len, args.new_tokens
  c.sampling.max_new_tokens, c.sampling.temperature = args.new_tokens, 1.0
  c.gkd.lmbda, c.gkd.loss, c.gkd.temperature = 1.0, "jsd", 1.0
  c.gkd.beta = getattr(args, "beta", 0.5)  # profile_step's args have none
  c.optim.name, c.optim.learning_rate, c.optim.schedule = "adamw", args.lr, "constant"
  c.optim.warmup_steps = 0
  c.optim.weight_decay, c.optim.grad_clip = 0.0, 1.0
  c.train.batch_size, c.train.num_steps = args.batch, 100000
  c.eval.batch_size = args.batch
  return c


class GkdJaxSide:
  """gkd_jax's train_step (λ=1), its sampler alone, and train_step with λ=0 (fixed completions)."""

  def __init__(self, args, paths, devices=None, remat=None):
    import dataclasses
    import functools
    import jax
    import jax.numpy as jnp
    from gkd_jax import models, programs, sharding, train
    from gkd_jax.sampling import sample

    self.jax = jax
    config = gkd_jax_config(args, paths)
    if remat is not None:  # default: the config's own train.remat
      config.train.remat = remat
    run = train.build(config, devices=devices)  # default: all devices
    on = dataclasses.replace(run.settings, eos_id=())  # no id ends a row: forced lengths
    self.run = run = dataclasses.replace(run, settings=on)
    self.on = programs.compile_steps(run)
    self.off = programs.compile_steps(
        dataclasses.replace(run, settings=dataclasses.replace(on, lmbda=0.0))
    )
    self.matmul = mlp_matmul(args, paths)
    arrays = load_arrays(args, paths)
    rules = tuple(run.config.sharding_rules)
    put = lambda x: jax.device_put(
        jnp.asarray(x, jnp.int32), sharding.batch_sharding(run.mesh, rules, 2)
    )
    self.batch = dict(
        prompt_tokens=put(arrays["prompt"]),
        prompt_mask=put(arrays["prompt_mask"]),
        completion_tokens=put(arrays["completion"]),
        completion_mask=put(np.ones_like(arrays["completion"])),
    )
    self.rng = jax.random.key(0)
    self.state = self.on.init_state(run.params)
    s = run.settings
    kw = dict(
        max_new_tokens=s.sample_max_new_tokens,
        temperature=s.sample_temperature,
        top_k=s.sample_top_k,
        top_p=s.sample_top_p,
        eos_id=s.eos_id,
    )
    self._sample = {}
    for dtype in ("float32", "bfloat16"):  # sampling precision (issue: bf16 is TPU's common case)
      model = models.build(run.student.config, getattr(jnp, dtype), run.student.scan_layers)
      self._sample[dtype] = (jax.jit(functools.partial(sample, model, **kw)), model.dtype)
    self._alone = None  # each half's weight matmuls alone (matmul_floor.py), built on first use
    self._compiled = {}

  def _state_step(self, steps) -> dict:
    self.state, m = steps.train_step(self.state, self.run.teacher_params, self.batch, self.rng)
    return dict(loss=float(m["loss"]), completion_tokens=float(m["num_tokens"]))

  def op(self, name: str) -> dict:
    t = time.perf_counter()
    out = {}
    if name == "step":
      out = self._state_step(self.on)
    elif name == "update":
      out = self._state_step(self.off)
    elif name in ("update_matmuls", "sample_matmuls"):
      if self._alone is None:  # only the cell that reports the floor: build and compile, untimed
        import matmul_floor  # pylint: disable=import-outside-toplevel  (jax: not in TRL's venv)

        (B, P), N = self.batch["prompt_tokens"].shape, self.batch["completion_tokens"].shape[1]
        student, teacher = self.run.student.config, self.run.teacher.config
        self._alone = matmul_floor.programs(student, teacher, B, P, N)
        for fn, args in self._alone.values():
          self.jax.block_until_ready(fn(*args))
        t = time.perf_counter()
      fn, args = self._alone[name.split("_")[0]]
      self.jax.block_until_ready(fn(*args))
    elif name.startswith("sample"):
      dtype = "bfloat16" if name == "sample_bf16" else "float32"
      fn, wdtype = self._sample[dtype]
      params = self.jax.tree.map(lambda x: x.astype(wdtype), self.state.params)
      t = time.perf_counter()  # the cast is not part of sampling
      self.jax.block_until_ready(
          fn(params, self.batch["prompt_tokens"], self.batch["prompt_mask"], self.rng).tokens
      )
    else:
      raise ValueError(name)
    out["s"] = time.perf_counter() - t
    return out

  def compiled_train_step(self, steps):
    """`steps.train_step` (self.on or self.off) compiled for the benchmark's batch (once)."""
    fn = steps.train_step
    if not hasattr(fn, "lower"):  # already compiled (train.remat="auto")
      return fn
    if id(steps) not in self._compiled:
      lowered = fn.lower(self.state, self.run.teacher_params, self.batch, self.rng)
      self._compiled[id(steps)] = lowered.compile()
    return self._compiled[id(steps)]

  def memory_analysis(self) -> dict:
    """MiB of XLA's buffer assignment for train_step at λ=1 ("step") and λ=0 ("update"):
    arguments (weights, optimizer state, batch), outputs, aliased (donated state), temporaries,
    and peak = arguments + outputs - aliased + temporaries, as gkd_jax.plan reports it."""
    out = {}
    for name, steps in (("step", self.on), ("update", self.off)):
      m = self.compiled_train_step(steps).memory_analysis()
      mib = dict(
          arguments=m.argument_size_in_bytes,
          outputs=m.output_size_in_bytes,
          aliased=m.alias_size_in_bytes,
          temporaries=m.temp_size_in_bytes,
      )
      mib["peak"] = mib["arguments"] + mib["outputs"] - mib["aliased"] + mib["temporaries"]
      out[name] = {k: v / 2**20 for k, v in mib.items()}
    return out

  def floor(self) -> dict:
    """FLOPs of the loss + update program (XLA's cost analysis of train_step at λ=0: no loop, so
    the count is whole) and of sampling's model work (the sampler is a loop, so: one student
    forward over prompt + completion with logits where a token is chosen, which is what prefill
    and decode compute between them), and this CPU's float32 matmul rate, measured here."""
    from gkd_jax.scoring import score

    def flops(compiled):
      cost = compiled.cost_analysis()
      return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])

    b = self.batch
    tokens = self.jax.numpy.concatenate([b["prompt_tokens"], b["completion_tokens"]], axis=1)
    forward = self.jax.jit(
        lambda p, t: score(self.run.student, p, t, output_from=b["prompt_tokens"].shape[1] - 1)
    )
    return dict(
        update_flops=flops(self.compiled_train_step(self.off)),
        sample_flops=flops(forward.lower(self.state.params, tokens).compile()),
        **matmul_rate(self.matmul),
    )

  def versions(self) -> dict:
    import flax
    import optax

    run = self.run
    return dict(
        jax=self.jax.__version__,
        flax=flax.__version__,
        optax=optax.__version__,
        devices=str(self.jax.devices()),
        remat=getattr(self.on, "remat", run.settings.remat),  # as compile_steps chose
        kernel_impl=run.settings.kernel_impl,
        dtype=str(run.student.dtype),
    )


# ---- the TRL side (runs under the torch venv) ---------------------------------------------------


class TrlSide:
  """A GKDTrainer, stepped one update at a time as transformers' Trainer inner loop does."""

  def __init__(self, args, paths):
    import random
    import torch
    import transformers

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import trl
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer
    from trl.models.utils import unwrap_model_for_generation

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    self.torch, self.unwrap = torch, unwrap_model_for_generation
    load = lambda p: transformers.AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)
    student, teacher = load(paths["student"]), load(paths["teacher"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(paths["student"])
    cfg = GKDConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        lmbda=1.0,
        beta=args.beta,
        temperature=1.0,
        max_new_tokens=args.new_tokens,
        seq_kd=False,
        report_to=[],
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=0,
        save_strategy="no",
        logging_strategy="no",
        dataloader_num_workers=0,
        gradient_checkpointing=False,
    )
    dummy = Dataset.from_dict(
        {"messages": [[{"role": "user", "content": "t3"}, {"role": "assistant", "content": "t4"}]]}
    )
    self.trainer = tr = GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=cfg,
        train_dataset=dummy,
        processing_class=tokenizer,
    )
    tr.create_optimizer_and_scheduler(num_training_steps=100000)
    tr.current_gradient_accumulation_steps = 1
    tr.generation_config.min_new_tokens = args.new_tokens  # forced length: EOS never sampled
    tr.generation_kwargs["min_new_tokens"] = args.new_tokens
    self.gen_s = 0.0
    generate = tr.generate_on_policy_outputs

    def timed_generate(*a, **kw):  # the sampling part of each step, timed inside the step
      t = time.perf_counter()
      out = generate(*a, **kw)
      self.gen_s += time.perf_counter() - t
      self.completion_tokens = int((out[2] != -100).sum())  # labels of the completion
      return out

    tr.generate_on_policy_outputs = timed_generate
    arrays = load_arrays(args, paths)
    prompt, prompt_mask = torch.tensor(arrays["prompt"]), torch.tensor(arrays["prompt_mask"])
    completion = torch.tensor(arrays["completion"])
    ids = torch.cat([prompt, completion], dim=1)
    labels = ids.clone()
    labels[:, : args.prompt_len] = -100
    self.inputs = dict(  # as generate_on_policy_outputs builds them from its samples
        prompts=prompt,
        prompt_attention_mask=prompt_mask,
        input_ids=ids,
        attention_mask=torch.cat([prompt_mask, torch.ones_like(completion)], dim=1),
        labels=labels,
    )
    self.versions_ = dict(
        torch=torch.__version__,
        transformers=transformers.__version__,
        trl=trl.__version__,
        threads=torch.get_num_threads(),
        attn_implementation=student.config._attn_implementation,
    )

  def _update(self, lmbda: float) -> float:
    tr = self.trainer
    tr.lmbda = lmbda
    loss = tr.training_step(tr.model, dict(self.inputs))
    tr._clip_grad_norm(tr.model)
    tr.optimizer.step()
    tr.lr_scheduler.step()
    tr.model.zero_grad()
    return float(loss)

  def op(self, name: str) -> dict:
    tr = self.trainer
    self.gen_s = 0.0
    t = time.perf_counter()
    out = {}
    if name == "step":
      out["loss"] = self._update(1.0)
      out["generate_s"] = self.gen_s
      out["completion_tokens"] = self.completion_tokens
    elif name == "update":
      out["loss"] = self._update(0.0)
    elif name == "sample":  # what training_step does before the loss, alone
      with self.unwrap(tr.model, tr.accelerator, generation_kwargs=tr.generation_kwargs) as m:
        tr.generate_on_policy_outputs(m, dict(self.inputs), tr.generation_config)
    else:
      raise ValueError(name)
    out["s"] = time.perf_counter() - t
    return out

  def versions(self) -> dict:
    return self.versions_


# ---- child processes and the driver -------------------------------------------------------------


def _status_mib(*keys) -> dict:
  """{key: MiB} of this process's /proc/self/status memory lines (Linux), e.g. VmRSS, VmHWM."""
  out = {}
  with open("/proc/self/status") as f:
    for line in f:
      k, _, v = line.partition(":")
      if k in keys:
        out[k] = int(v.split()[0]) / 1024  # kB
  return out


def _reset_peak() -> bool:
  """Resets this process's peak resident set (VmHWM, and so ru_maxrss) to its current RSS."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def op_peaks(side, ops=("step", "sample", "update")) -> dict:
  """{op: {before, peak} MiB}: the resident set before each op and its peak during it (the peak
  reset before it); {} where the peak cannot be reset. Untimed: these ops are extra steps."""
  out = {}
  for op in ops:
    if not _reset_peak():
      return {}
    before = _status_mib("VmRSS")["VmRSS"]
    side.op(op)
    out[op] = dict(before=before, peak=_status_mib("VmHWM")["VmHWM"])
  return out


def serve(args) -> None:
  """A child: set up, time the first calls, report the step-1/2 losses and the memory, then one
  op per line."""
  import resource

  maxrss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  paths = json.loads(args.paths)
  t = time.perf_counter()
  side = (GkdJaxSide if args.child == "gkd_jax" else TrlSide)(args, paths)
  ready = dict(setup_s=time.perf_counter() - t)
  # Step 1 and 2 on the fixed completion from the initial weights (the apples-to-apples check);
  # the first call of each op includes compilation / warm-up.
  first = {}
  check = ("update", "update") if args.loss_check else ()
  for name in check + ("step", "sample") + (("sample_bf16",) if args.child == "gkd_jax" else ()):
    r = side.op(name)
    first.setdefault(name, []).append(r)
  setup_peak = maxrss()  # load + compile + first calls; the resets below restart ru_maxrss
  ready["memory"] = dict(setup_peak=setup_peak, ops=op_peaks(side))
  if args.child == "gkd_jax":
    ready["floor"] = side.floor()
    ready["memory"]["xla"] = side.memory_analysis()
  else:
    import torch

    ready["floor"] = matmul_rate(mlp_matmul(args, paths), torch)
  ready.update(
      losses_fixed=[r["loss"] for r in first.get("update", [])],
      first_call_s={k: v[0]["s"] for k, v in first.items()},
      versions=side.versions(),
  )
  print(json.dumps(ready), flush=True)
  for line in sys.stdin:
    name = line.strip()
    if name == "quit":
      break
    out = side.op(name)
    out["maxrss_mib"] = max(setup_peak, maxrss())
    print(json.dumps(out), flush=True)


class Child:

  def __init__(self, python, child, args, paths, log_dir: Path):
    cmd = [python, __file__, "--child", child, "--paths", json.dumps(paths)]
    for k in ("batch", "prompt_len", "new_tokens", "lr", "beta", "dtype", "threads", "loss_check"):
      cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1")
    self.log = log_dir / f"{child}.log"
    self.name = child
    self.proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(self.log, "w"),  # noqa: SIM115  (the child's log, open for its lifetime)
        text=True,
        env=env,
    )

  def reply(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith("{"):
        return json.loads(line)
    sys.exit(
        f"{self.name} process ended early; its log ({self.log}):\n" + self.log.read_text()[-4000:]
    )

  def ask(self, op: str) -> dict:
    self.proc.stdin.write(op + "\n")
    self.proc.stdin.flush()
    return self.reply()

  def close(self):
    if self.proc.poll() is None:
      self.proc.stdin.write("quit\n")
      self.proc.stdin.flush()
      self.proc.wait(timeout=120)


def _stats(xs) -> dict:
  return dict(median=statistics.median(xs), min=min(xs), max=max(xs), n=len(xs))


def run_cell(args, paths, log_dir: Path, ops=("step", "sample", "update")) -> dict:
  """Both sides at one (batch, new_tokens): setup, then args.steps interleaved rounds of `ops`."""
  t0 = time.perf_counter()
  jx = Child(sys.executable, "gkd_jax", args, paths, log_dir)
  ready_jx = jx.reply()  # sequential set-up: compile times are not disturbed by the other side
  tr = Child(args.ref_python, "trl", args, paths, log_dir)
  ready_tr = tr.reply()
  sides = {"gkd_jax": jx, "trl": tr}
  times = {s: {op: [] for op in ops} for s in sides}
  alone = ("update_matmuls", "sample_matmuls") if "update" in ops else ()  # the floor's rows
  for op in ("sample_bf16",) + alone:
    times["gkd_jax"][op] = []
  times["trl"]["step_generate"] = []
  rss = {}
  t1 = time.perf_counter()
  try:
    for r in range(args.steps):
      order = ("gkd_jax", "trl") if r % 2 == 0 else ("trl", "gkd_jax")
      for op in ops:
        for s in order:
          out = sides[s].ask(op)
          times[s][op].append(out["s"])
          if op == "step" and out["completion_tokens"] != args.batch * args.new_tokens:
            sys.exit(
                f"{s}: a step trained on {out['completion_tokens']} completion tokens, not "
                f"batch x new_tokens = {args.batch * args.new_tokens}: lengths not forced"
            )
          if "generate_s" in out:
            times[s]["step_generate"].append(out["generate_s"])
          rss[s] = out["maxrss_mib"]
      for op in ("sample_bf16",) + alone:
        times["gkd_jax"][op].append(jx.ask(op)["s"])
  finally:
    for c in sides.values():
      c.close()
  tokens = args.batch * args.new_tokens
  res = dict(
      batch=args.batch,
      prompt_len=args.prompt_len,
      new_tokens=args.new_tokens,
      steps=args.steps,
      ops=list(ops),
      wall_s=time.perf_counter() - t0,
      setup_wall_s=t1 - t0,
      rounds_wall_s=time.perf_counter() - t1,
      peak_rss_mib=rss,
  )
  for s, ready in (("gkd_jax", ready_jx), ("trl", ready_tr)):
    st = {op: _stats(v) for op, v in times[s].items()}
    res[s] = dict(
        times=st,
        raw=times[s],
        setup_s=ready["setup_s"],
        first_call_s=ready["first_call_s"],
        losses_fixed=ready["losses_fixed"],
        memory=ready["memory"],
        versions=ready["versions"],
        floor=ready["floor"],
        tokens_per_s=tokens / st["step"]["median"],
    )
  med = lambda s, op: res[s]["times"][op]["median"]
  res["ratio_trl_over_gkd_jax"] = {op: med("trl", op) / med("gkd_jax", op) for op in ops}
  if "update" not in ops:  # the rest of the step: loss + backward + update
    res["ratio_trl_over_gkd_jax"]["step_minus_sample"] = (
        med("trl", "step") - med("trl", "sample")
    ) / (med("gkd_jax", "step") - med("gkd_jax", "sample"))
  res["ratio_per_round"] = [a / b for a, b in zip(times["trl"]["step"], times["gkd_jax"]["step"])]
  # Robust to load from other jobs: each round's pair saw about the same load; the minima are
  # the least disturbed runs of each side.
  res["ratio_median_of_rounds"] = statistics.median(res["ratio_per_round"])
  res["ratio_of_minima"] = {
      op: res["trl"]["times"][op]["min"] / res["gkd_jax"]["times"][op]["min"] for op in ops
  }
  l_jx, l_tr = res["gkd_jax"]["losses_fixed"], res["trl"]["losses_fixed"]
  if l_jx:
    res["loss_check"] = dict(
        gkd_jax=l_jx,
        trl=l_tr,
        abs_diff=[abs(a - b) for a, b in zip(l_jx, l_tr)],
        rel_diff=[abs(a - b) / abs(b) for a, b in zip(l_jx, l_tr)],
    )
  return res


def _estimate_s(done: list, batch: int, new_tokens: int, prompt_len: int) -> float:
  """Predicted wall time of a cell: from the measured cell with the most tokens, its loading
  plus its first calls and timed rounds scaled by the tokens B·(P+N) (conservative: compilation
  and small-batch decoding grow less than that)."""
  if not done:
    return 0.0
  work = lambda b, n: b * (prompt_len + n)
  ref = max(done, key=lambda r: work(r["batch"], r["new_tokens"]))
  sides = (ref["gkd_jax"], ref["trl"])
  load = sum(x["setup_s"] for x in sides)
  first = sum(sum(x["first_call_s"].values()) for x in sides)
  scale = work(batch, new_tokens) / work(ref["batch"], ref["new_tokens"])
  return load + (first + ref["rounds_wall_s"]) * scale


TOY_SETUP = (
    "Student Gemma-2 256×4, teacher 512×6 (random weights), V=4096, random prompts of {P} tokens"
)
# Mode defaults: the random Gemma-2 pair, or --real's configs/prune_and_distill.py shapes.
DEFAULTS = {
    False: dict(prompt_len=32, new_tokens=64, beta=0.5, out="gkd_step_vs_trl"),
    True: dict(prompt_len=64, new_tokens=48, beta=0.9, out="gkd_step_vs_trl_smollm2"),
}


def parse_args(argv=None):
  """The options, with --real's or the random pair's defaults where none was given."""
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--prompt-len", type=int, default=None, help="default 32, --real 64")
  ap.add_argument("--new-tokens", type=int, default=None, help="default 64, --real 48")
  ap.add_argument("--steps", type=int, default=10, help="timed rounds (each: step, sample, update)")
  ap.add_argument("--lr", type=float, default=1e-4)
  ap.add_argument("--beta", type=float, default=None, help="JSD β: default 0.5, --real 0.9")
  ap.add_argument(
      "--dtype",
      default="float32",
      choices=("float32", "bfloat16"),
      help="gkd_jax models' dtype (TRL stays float32); sampling is timed in both",
  )
  ap.add_argument("--threads", type=int, default=2, help="torch threads")
  ap.add_argument(
      "--real",
      action="store_true",
      help="SmolLM2-135M-Instruct teacher, its 15-layer pruned student, the trainer's prompts "
      "(gkd_step_smollm2.py)",
  )
  ap.add_argument(
      "--teacher", default=None, help="--real: teacher HF folder (default: make demo's)"
  )
  ap.add_argument(
      "--student", default=None, help="--real: student HF folder (default: make demo's)"
  )
  ap.add_argument("--scaling", action="store_true", help="batch 8/32/128 x new tokens 64/256")
  ap.add_argument("--scaling-steps", type=int, default=3)
  ap.add_argument(
      "--max-cell-s",
      type=float,
      default=180.0,
      help="--scaling: skip a cell predicted to take longer (wall, both sides)",
  )
  ap.add_argument(
      "--out",
      default=None,
      help="results path without extension (.json and .md are written; default "
      "benchmarks/results/gkd_step_vs_trl, ..._scaling with --scaling, ..._smollm2 with --real)",
  )
  ap.add_argument(
      "--ref-python",
      default=str(ROOT / ".refvenv" / "bin" / "python"),
      help="python of a venv with torch + transformers + trl",
  )
  ap.add_argument(
      "--loss-check",
      type=int,
      default=1,
      help="1: both sides' loss at steps 1-2 on a fixed completion (off with --scaling)",
  )
  ap.add_argument("--child", choices=("gkd_jax", "trl"), help=argparse.SUPPRESS)
  ap.add_argument("--paths", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.real and args.scaling:
    ap.error("--real runs one cell: it cannot be combined with --scaling")
  if not args.real and (args.teacher or args.student):
    ap.error("--teacher/--student need --real")
  defaults = dict(DEFAULTS[args.real])
  if args.scaling:
    defaults["out"] = "gkd_step_vs_trl_scaling"
  for k, v in defaults.items():
    if getattr(args, k) is None:
      setattr(args, k, str(ROOT / "benchmarks" / "results" / v) if k == "out" else v)
  return args


def real_inputs(args, root: Path) -> tuple[dict, str]:
  """--real: (paths: the folders, the batch's .npz, the experiment's config; the setup line)."""
  import gkd_step_smollm2 as smollm2  # pylint: disable=import-outside-toplevel

  teacher, student = smollm2.folders(args.teacher, args.student)
  arrays = smollm2.batch_arrays(student, args.batch, args.prompt_len, args.new_tokens)
  np.savez(root / "arrays.npz", **arrays)
  paths = dict(
      teacher=str(teacher),
      student=str(student),
      train=write_dummy_train(root),
      arrays=str(root / "arrays.npz"),
      config=str(ROOT / "configs" / "prune_and_distill.py"),
  )
  return paths, smollm2.describe(teacher, student, arrays["prompt_mask"])


def main():
  args = parse_args()
  if args.child:
    serve(args)
    return
  if not os.access(args.ref_python, os.X_OK):
    print(
        f"--ref-python={args.ref_python} is not an executable python (make a torch venv: see "
        "the Makefile's fixtures target)",
        file=sys.stderr,
    )
    sys.exit(2)
  sys.path.insert(0, str(Path(__file__).resolve().parent))
  import gkd_step_report as report  # pylint: disable=import-outside-toplevel

  with tempfile.TemporaryDirectory() as tmp:
    if args.real:
      paths, setup = real_inputs(args, Path(tmp))
    else:
      paths, setup = write_checkpoints(Path(tmp)), TOY_SETUP.format(P=args.prompt_len)
    if not args.scaling:
      cells, skipped = [run_cell(args, paths, Path(tmp))], []
    else:
      cells, skipped = [], []
      args.steps, args.loss_check = args.scaling_steps, 0
      for b, n in ((8, 64), (32, 64), (8, 256), (128, 64), (32, 256), (128, 256)):  # by size
        est = _estimate_s(cells, b, n, args.prompt_len)
        if est > args.max_cell_s:
          skipped.append(
              dict(
                  batch=b,
                  new_tokens=n,
                  reason=(
                      f"predicted {est:.0f} s wall for {args.steps} rounds > --max-cell-s="
                      f"{args.max_cell_s:.0f} (extrapolated by tokens from the largest measured cell)"
                  ),
              )
          )
          continue
        args.batch, args.new_tokens = b, n
        cells.append(run_cell(args, paths, Path(tmp), ops=("step", "sample")))
        print(report.cell_line(cells[-1]), flush=True)
  result = dict(
      command=" ".join([Path(sys.executable).name] + sys.argv),
      setup=setup,
      real=args.real,
      beta=args.beta,
      cells=cells,
      skipped=skipped,
      scaling=args.scaling,
      dtype=args.dtype,
      threads=args.threads,
      nice=os.nice(0),
      cpus=os.cpu_count(),
      date=time.strftime("%Y-%m-%d %H:%M:%S"),
      commit=report.git_commit(ROOT),
  )
  report.write(result, Path(args.out))
  print(Path(args.out).with_suffix(".md").read_text())


if __name__ == "__main__":
  main()
