"""GKD algorithm: λ mixing, masking, and the loss against an independent dense computation."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gkd_jax import divergences, gkd, sampling, testing
from gkd_jax.divergences import DivergenceSpec
from gkd_jax.optim import OptimConfig
from gkd_jax.scoring import score

V, P, C, B = 32, 5, 6, 8
EOS, PAD = 2, 0


def _tiny(seed, layers=1, dim=16):
  return testing.tiny_llama(
      seed, vocab_size=V, num_layers=layers, embed_dim=dim, eos_id=EOS, pad_id=PAD
  )


def _batch(seed):
  rng = np.random.default_rng(seed)
  prompt = rng.integers(3, V, size=(B, P)).astype(np.int32)
  pmask = np.ones((B, P), np.int32)
  pmask[0, :2] = 0  # left padding
  prompt[0, :2] = PAD
  comp = rng.integers(3, V, size=(B, C)).astype(np.int32)
  lengths = rng.integers(1, C + 1, size=B)
  cmask = (np.arange(C)[None] < lengths[:, None]).astype(np.int32)
  comp[np.arange(B), lengths - 1] = EOS
  comp = np.where(cmask == 1, comp, PAD)
  return dict(
      prompt_tokens=prompt, prompt_mask=pmask, completion_tokens=comp, completion_mask=cmask
  )


def _optim(**kw):
  return dict(
      dict(
          name="adamw",
          learning_rate=1e-3,
          schedule="constant",
          warmup_steps=0,
          weight_decay=0.0,
          b1=0.9,
          b2=0.99,
          grad_clip=1.0,
          grad_accum_steps=1,
      ),
      **kw,
  )


@pytest.fixture(scope="module")
def setup():
  student, params = _tiny(0)
  teacher, tparams = _tiny(1, layers=2, dim=24)
  return student, params, teacher, tparams


def _counting_sampler(monkeypatch):
  """Wraps gkd's sampler so every *executed* call (not trace) is counted with its row count."""
  calls = []

  def wrapped(model, params, prompt, pmask, rng, **kw):
    out = sampling.sample(model, params, prompt, pmask, rng, **kw)
    jax.debug.callback(lambda n: calls.append(int(n)), prompt.shape[0])
    return out

  monkeypatch.setattr(gkd, "sample", wrapped)
  return calls


def _run(setup, settings, steps, batch_seed=0):
  student, params, teacher, tparams = setup
  opt = OptimConfig(**_optim()).build(steps)
  state = gkd.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt.init(params))
  step = jax.jit(
      functools.partial(
          gkd.train_step, student=student, teacher=teacher, optimizer=opt, settings=settings
      )
  )
  batch = jax.tree.map(jnp.asarray, _batch(batch_seed))
  fractions = []
  for _ in range(steps):
    state, m = step(state, tparams, batch, jax.random.key(7))
    fractions.append(float(m["on_policy_fraction"]))
  jax.effects_barrier()
  return state, np.array(fractions)


def test_lambda_zero_never_samples_and_lambda_one_always_does(setup, monkeypatch):
  calls = _counting_sampler(monkeypatch)
  base = gkd.GKDSettings(
      divergence=DivergenceSpec("forward_kl"), sample_max_new_tokens=C, eos_id=EOS
  )
  _, frac = _run(setup, dataclasses.replace(base, lmbda=0.0), 3)
  assert calls == [] and np.all(frac == 0)
  _, frac = _run(setup, dataclasses.replace(base, lmbda=1.0), 3)
  assert calls == [B] * 3 and np.all(frac == 1)


@pytest.mark.slow
def test_batch_mixing_on_policy_fraction_is_lambda(setup, monkeypatch):
  calls = _counting_sampler(monkeypatch)
  settings = gkd.GKDSettings(
      lmbda=0.25,
      mixing="batch",
      divergence=DivergenceSpec("jsd"),
      sample_max_new_tokens=C,
      eos_id=EOS,
  )
  steps = 400
  _, frac = _run(setup, settings, steps)
  assert set(np.unique(frac)) <= {0.0, 1.0}
  sigma = np.sqrt(0.25 * 0.75 / steps)
  assert abs(frac.mean() - 0.25) < 3 * sigma, frac.mean()
  assert len(calls) == int(frac.sum())  # the sampler ran exactly on the on-policy steps


def test_example_mixing_puts_round_lambda_b_rows_on_policy(setup, monkeypatch):
  calls = _counting_sampler(monkeypatch)
  settings = gkd.GKDSettings(
      lmbda=0.3,
      mixing="example",
      divergence=DivergenceSpec("reverse_kl"),
      sample_max_new_tokens=C,
      eos_id=EOS,
  )
  _, frac = _run(setup, settings, 2)
  k = round(0.3 * B)
  np.testing.assert_allclose(frac, k / B)
  assert calls == [k, k]


@pytest.mark.parametrize("kind", ["jsd", "reverse_kl"])
def test_loss_equals_dense_divergence_over_completion_tokens_only(setup, kind):
  """Independent path: full logits from `score`, the dense reference divergence, explicit shift."""
  student, params, teacher, tparams = setup
  batch = _batch(3)
  tokens = np.concatenate([batch["prompt_tokens"], batch["completion_tokens"]], 1)
  mask = np.concatenate([batch["prompt_mask"], batch["completion_mask"]], 1)
  settings = gkd.GKDSettings(
      divergence=DivergenceSpec(kind, beta=0.3, temperature=1.5), kernel_impl="chunked"
  )
  loss, metrics = gkd.loss_fn(
      params,
      tparams,
      student,
      teacher,
      jnp.asarray(tokens),
      jnp.asarray(mask),
      P,
      jnp.asarray(batch["completion_mask"]),
      jnp.zeros((B,)),
      settings,
  )
  ls = score(student, params, jnp.asarray(tokens), jnp.asarray(mask))
  lt = score(teacher, tparams, jnp.asarray(tokens), jnp.asarray(mask))
  d = divergences.token_divergence(ls, lt, kind=kind, beta=0.3, temperature=1.5)
  d = np.asarray(d, np.float64)
  # position t predicts token t+1: completion token j is predicted at position P-1+j
  weights = np.zeros_like(d)
  weights[:, P - 1 : P - 1 + C] = batch["completion_mask"]
  expected = (d * weights).sum() / weights.sum()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  # tokens after EOS carry no loss: changing them changes nothing
  tokens2 = tokens.copy()
  tokens2[:, P:][batch["completion_mask"] == 0] = 7
  loss2, _ = gkd.loss_fn(
      params,
      tparams,
      student,
      teacher,
      jnp.asarray(tokens2),
      jnp.asarray(mask),
      P,
      jnp.asarray(batch["completion_mask"]),
      jnp.zeros((B,)),
      settings,
  )
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)


def test_ce_term_is_dataset_cross_entropy_and_skips_on_policy_rows(setup):
  student, params, _, _ = setup
  batch = _batch(4)
  tokens = np.concatenate([batch["prompt_tokens"], batch["completion_tokens"]], 1)
  mask = np.concatenate([batch["prompt_mask"], batch["completion_mask"]], 1)
  on_policy = np.zeros(B, np.float32)
  on_policy[:3] = 1
  settings = gkd.GKDSettings(divergence_weight=0.0, ce_weight=1.0)
  loss, _ = gkd.loss_fn(
      params,
      None,
      student,
      None,
      jnp.asarray(tokens),
      jnp.asarray(mask),
      P,
      jnp.asarray(batch["completion_mask"]),
      jnp.asarray(on_policy),
      settings,
  )
  logits = np.asarray(score(student, params, jnp.asarray(tokens), jnp.asarray(mask)), np.float64)
  logp = (
      logits
      - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
      - logits.max(-1, keepdims=True)
  )
  nll = -np.take_along_axis(logp[:, P - 1 : -1], tokens[:, P:, None], -1)[..., 0]
  w = batch["completion_mask"] * (1 - on_policy[:, None])
  np.testing.assert_allclose(float(loss), (nll * w).sum() / w.sum(), rtol=1e-5)


def test_grad_accumulation_is_one_update_with_the_mean_gradient(setup):
  student, params, _, _ = setup
  settings = gkd.GKDSettings(lmbda=0.0, divergence_weight=0.0, ce_weight=1.0)
  accum = OptimConfig(**_optim(grad_accum_steps=2)).build(4)
  step = jax.jit(
      functools.partial(
          gkd.train_step, student=student, teacher=None, optimizer=accum, settings=settings
      )
  )
  state = gkd.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=accum.init(params))
  batches = [jax.tree.map(jnp.asarray, _batch(seed)) for seed in (5, 6)]
  state, _ = step(state, None, batches[0], jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, state.params, params)  # no update yet
  state, _ = step(state, None, batches[1], jax.random.key(0))

  def grad(batch):
    tokens = jnp.concatenate([batch["prompt_tokens"], batch["completion_tokens"]], 1)
    mask = jnp.concatenate([batch["prompt_mask"], batch["completion_mask"]], 1)
    return jax.grad(
        lambda p: gkd.loss_fn(
            p,
            None,
            student,
            None,
            tokens,
            mask,
            P,
            batch["completion_mask"],
            jnp.zeros((B,)),
            settings,
        )[0]
    )(params)

  mean_grad = jax.tree.map(lambda a, b: (a + b) / 2, grad(batches[0]), grad(batches[1]))
  plain = OptimConfig(**_optim()).build(2)
  updates, _ = plain.update(mean_grad, plain.init(params), params)
  expected = jax.tree.map(lambda p, u: p + u, params, updates)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state.params, expected
  )


def test_sampler_and_scorer_log_probs_agree_in_float32(setup):
  """The student's log p of its own sampled tokens, recorded by the sampler (KV-cache decode) and
  recomputed by the loss's forward (the divergence's value pass), agree in float32 at a temperature
  != 1; with top-k truncation the two distributions differ by design and nothing is reported."""
  student, params, teacher, tparams = setup
  opt = OptimConfig(**_optim()).build(1)
  batch = jax.tree.map(jnp.asarray, _batch(0))
  base = gkd.GKDSettings(
      lmbda=1.0,
      divergence=DivergenceSpec("jsd", temperature=1.3),
      sample_temperature=1.3,
      sample_max_new_tokens=C,
      eos_id=EOS,
  )
  for settings in (base, dataclasses.replace(base, sample_top_k=5)):
    state = gkd.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt.init(params))
    _, m = jax.jit(
        functools.partial(
            gkd.train_step, student=student, teacher=teacher, optimizer=opt, settings=settings
        )
    )(state, tparams, batch, jax.random.key(3))
    assert gkd.sampler_matches_loss(settings) == (settings is base)
    if settings is base:
      assert 0.0 <= float(m["sampler_logprob_diff_max"]) < 1e-4, m
      assert float(m["sampler_logprob_frac_above_1e-3"]) == 0.0
      assert float(m["sampler_logprob_diff_mean"]) <= float(m["sampler_logprob_diff_max"])
    else:
      assert "sampler_logprob_diff_max" not in m
