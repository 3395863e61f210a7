"""The GKD algorithm: choose completions (λ mixing, SeqKD), the loss, one train step.

Conventions: a batch holds LEFT-padded prompts [B,P] and RIGHT-padded dataset
completions [B,C] (EOS included in the mask). With probability λ the completions are replaced by the
student's own samples (no gradient through sampling); otherwise they stay the dataset's, or become
the teacher's samples when `seq_kd`. Student and teacher then score the same prompt+completion
sequence and the loss is a token-level divergence averaged over valid completion tokens of the
global batch, plus an optional cross-entropy on dataset (off-policy) completions.

SFT (divergence_weight=0, ce_weight=1), supervised KD (λ=0), SeqKD (λ=0, seq_kd), on-policy GKD (λ=1)
and mixtures are settings of `GKDSettings`, not code paths of their own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gkd_jax import kernels, models
from gkd_jax.divergences import DivergenceSpec, masked_mean
from gkd_jax.kernels import Layout
from gkd_jax.scoring import score
from gkd_jax.sampling import sample

# How λ mixes on-policy rows into a batch: one coin per batch, or round(λ·B) rows of every batch.
MIXINGS = ("batch", "example")


@dataclasses.dataclass(frozen=True)
class GKDSettings:
  """Static (hashable) algorithm settings, built from `config.gkd` and `config.sampling`."""

  lmbda: float = 1.0
  mixing: str = "batch"  # one of MIXINGS
  # mixing="batch": the step's on-policy coin when the caller drew it (`batch_coins`, the coins
  # this step would draw) and compiled a program for one side; None = the step draws it.
  coin: Optional[bool] = None
  seq_kd: bool = False
  # The divergence and its hyperparameters (the models' soft-caps are added where they are known).
  divergence: DivergenceSpec = DivergenceSpec("jsd")
  divergence_weight: float = 1.0
  ce_weight: float = 0.0
  kernel_impl: str = "auto"
  # Platform the divergence kernels are built for; None = the default backend. "tpu" on a CPU host
  # builds the real Mosaic kernels instead of interpret mode (`gkd-jax plan` compiles for a TPU).
  kernel_platform: Optional[str] = None
  # What student layers keep for the backward pass: a gkd_jax/remat.py policy name, True (= full)
  # or False (= none); programs.compile_steps resolves train.remat="auto".
  remat: bool | str = False
  sample_temperature: float = 1.0
  sample_top_k: int = 0
  sample_top_p: float = 1.0
  sample_max_new_tokens: int = 64
  eos_id: Any = None  # one id or a tuple of ids that end a sampled completion
  # How the divergence's tokens and vocabulary lie on the mesh (None: one device's view).
  layout: Optional[Layout] = None

  @property
  def sampler(self) -> dict:
    """`sampling.sample`'s keyword arguments for on-policy (and SeqKD) completions."""
    return dict(
        max_new_tokens=self.sample_max_new_tokens,
        temperature=self.sample_temperature,
        top_k=self.sample_top_k,
        top_p=self.sample_top_p,
        eos_id=self.eos_id,
    )

  @classmethod
  def from_config(cls, config, eos_id, layout=None):
    g, s = config.gkd, config.sampling
    divergence = DivergenceSpec(
        g.loss, beta=float(g.beta), alpha=float(g.alpha), temperature=float(g.temperature)
    )
    return cls(
        layout=layout,
        lmbda=float(g.lmbda),
        mixing=g.mixing,
        seq_kd=bool(g.seq_kd),
        divergence=divergence,
        divergence_weight=float(g.divergence_weight),
        ce_weight=float(g.ce_weight),
        kernel_impl=g.kernel_impl,
        remat=False if config.train.remat == "auto" else config.train.remat,
        sample_temperature=float(s.temperature),
        sample_top_k=int(s.top_k),
        sample_top_p=float(s.top_p),
        sample_max_new_tokens=int(s.max_new_tokens),
        eos_id=eos_id,
    )


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  nonfinite_steps: Any = 0  # steps whose update was rejected for a non-finite loss/grad/param


def _fit_length(length, pad_id, tokens_BxN, *rest_BxN):
  """Pads (pad_id; zeros for the rest) or cuts sampled completions to the completion length."""
  n = tokens_BxN.shape[1]
  if n >= length:
    return (tokens_BxN[:, :length],) + tuple(x[:, :length] for x in rest_BxN)
  pad = ((0, 0), (0, length - n))
  return (jnp.pad(tokens_BxN, pad, constant_values=pad_id),) + tuple(
      jnp.pad(x, pad) for x in rest_BxN
  )


def _samples(model, params, prompt_BxP, prompt_mask_BxP, rng, length, s: GKDSettings):
  """(tokens, mask, log-prob the sampler recorded) [B, length] of `model`'s samples."""
  out = sample(
      model,
      jax.lax.stop_gradient(params),
      prompt_BxP,
      prompt_mask_BxP,
      rng,
      activations=activation_sharding(s, prompt_BxP.shape[0]),
      **s.sampler,
  )
  tokens, mask, logprob = _fit_length(
      length, model.config.pad_id, out.tokens, out.mask.astype(jnp.int32), out.logprobs
  )
  return tokens.astype(jnp.int32), mask, logprob


def batch_coin(step_rng, lmbda: float) -> jax.Array:
  """Whether a `mixing="batch"` step is on-policy: one coin per batch (Algorithm 1, TRL), from
  the step's key (`fold_in(rng, step)`, as `train_step` makes it); the trainer can draw the same
  coin outside the step (e.g. to skip the live teacher on off-policy steps)."""
  return jax.random.bernoulli(jax.random.split(step_rng, 3)[0], lmbda)


def batch_coins(seed: int, lmbda: float, num_steps: int) -> np.ndarray:
  """bool [num_steps]: the coin `train_step` draws at each step of a run seeded `seed` (all at
  once, on the host: e.g. to route off-policy steps to a program without the live teacher)."""
  key = jax.random.key(seed)
  draw = jax.vmap(lambda step: batch_coin(jax.random.fold_in(key, step), lmbda))
  return np.asarray(jax.jit(draw)(jnp.arange(num_steps)))


def choose_completions(student, params, teacher, teacher_params, batch, rng, s: GKDSettings):
  """Returns (completion_tokens [B,C], completion_mask [B,C], on_policy [B] float32,
  sampler log-prob [B,C] of the student's own samples, 0 on other rows)."""
  prompt_BxP, pmask_BxP = batch["prompt_tokens"], batch["prompt_mask"]
  b, c = batch["completion_tokens"].shape
  coin_rng, student_rng, teacher_rng = jax.random.split(rng, 3)

  def off_policy(rows):
    if s.seq_kd:
      tokens, mask, _ = _samples(
          teacher, teacher_params, prompt_BxP[rows], pmask_BxP[rows], teacher_rng, c, s
      )
    else:
      tokens, mask = batch["completion_tokens"][rows], batch["completion_mask"][rows]
    return tokens, mask, jnp.zeros(tokens.shape, jnp.float32)

  def on_policy(rows):
    return _samples(student, params, prompt_BxP[rows], pmask_BxP[rows], student_rng, c, s)

  everything = slice(None)
  if s.lmbda == 0.0 or s.coin is False:
    return (*off_policy(everything)[:2], jnp.zeros((b,), jnp.float32), jnp.zeros((b, c)))
  if s.lmbda == 1.0 or s.coin is True:
    tokens, mask, logprob = on_policy(everything)
    return tokens, mask, jnp.ones((b,), jnp.float32), logprob
  if s.mixing == "example":  # exactly round(λ·B) on-policy rows, chosen at random every batch
    k = int(round(s.lmbda * b))
    perm_B = jax.random.permutation(coin_rng, b)
    on_rows, off_rows = perm_B[:k], perm_B[k:]
    parts = [
        jnp.zeros((b, c), x.dtype).at[on_rows].set(x).at[off_rows].set(y)
        for x, y in zip(on_policy(on_rows), off_policy(off_rows))
    ]
    return parts[0], parts[1], jnp.zeros((b,), jnp.float32).at[on_rows].set(1.0), parts[2]
  coin = batch_coin(rng, s.lmbda)
  tokens, mask, logprob = jax.lax.cond(
      coin, lambda: on_policy(everything), lambda: off_policy(everything)
  )
  return tokens, mask, jnp.full((b,), coin, jnp.float32), logprob


def _completion_hidden(
    model, params, tokens_BxT, mask_BxT, prompt_len, s: GKDSettings, remat=False
):
  """Final hidden states at the positions that predict each completion token: [B,C,D]. The last
  layer runs at those positions only (the prompt feeds it keys and values). The residual stream
  keeps the batch's rows over the mesh's batch axes (`activation_sharding`)."""
  hidden_BxCxD = score(
      model,
      params,
      tokens_BxT,
      mask_BxT,
      return_hidden=True,
      remat=remat,
      output_from=prompt_len - 1,
      activations=activation_sharding(s, tokens_BxT.shape[0]),
  )
  return hidden_BxCxD[:, :-1]


def activation_sharding(s: GKDSettings, batch: int):
  """Rows over the layout's token (batch) axes for a [B, T, D] activation; None on one device or
  when the rows do not split evenly."""
  if s.layout is None or not s.layout.token_axes:
    return None
  axes = s.layout.token_axes
  shards = int(np.prod([s.layout.mesh.shape[a] for a in axes]))
  if batch % shards:
    return None
  return jax.sharding.NamedSharding(s.layout.mesh, jax.sharding.PartitionSpec(axes))


def _divergence(hs_NxD, ws_DxV, ht_NxD, wt_DxV, tokens_N, spec, s: GKDSettings):
  """(divergence [N], kernels.TokenStats), laid out on the mesh by `s.layout`."""
  impl, kw = s.kernel_impl, {}
  if s.kernel_platform is not None:  # e.g. compiling for a TPU from a CPU host (`gkd-jax plan`)
    tokens = hs_NxD.shape[0] // (s.layout.token_shards if s.layout else 1)
    impl = kernels.resolve_impl(impl, s.kernel_platform, tokens=tokens, vocab=ws_DxV.shape[1])
    kw = dict(interpret=False)
  return kernels.fused_linear_divergence(
      hs_NxD,
      ws_DxV,
      ht_NxD,
      wt_DxV,
      spec,
      tokens=tokens_N,
      impl=impl,
      layout=s.layout,
      return_stats=True,
      **kw,
  )


def _entropy(hidden_NxD, unembed_DxV, softcap, s: GKDSettings):
  """Per-token entropy at temperature 1 (a metric: no gradient), when no divergence gives it."""
  hidden_NxD, unembed_DxV = jax.lax.stop_gradient((hidden_NxD, unembed_DxV))
  return kernels.entropy(hidden_NxD, unembed_DxV, softcap=softcap, layout=s.layout)


MISMATCH_TOLERANCE = 1e-3  # |log p| difference counted by `sampler_logprob_frac_above_1e-3`
MISMATCH_WARN = 0.1  # `gkd-jax train` warns once when a step's largest difference exceeds this


def sampler_matches_loss(s: GKDSettings) -> bool:
  """Whether the sampler draws from the distribution the loss scores (same temperature, no top-k /
  top-p truncation), so that their log-probabilities of a sampled token must agree."""
  return (
      s.lmbda > 0
      and s.coin is not False
      and s.sample_temperature > 0
      and s.sample_top_k == 0
      and s.sample_top_p >= 1.0
      and s.sample_temperature == s.divergence.temperature
  )


def _mismatch_metrics(loss_logprob_N, sample_logprob_N, on_policy_mask_N):
  """Sampler vs scorer: |log p| of the same tokens, same student, same temperature."""
  diff_N = jnp.where(on_policy_mask_N > 0, jnp.abs(loss_logprob_N - sample_logprob_N), 0.0)
  return {
      "sampler_logprob_diff_mean": masked_mean(diff_N, on_policy_mask_N),
      "sampler_logprob_diff_max": jnp.max(diff_N),
      "sampler_logprob_frac_above_1e-3": masked_mean(
          (diff_N > MISMATCH_TOLERANCE).astype(jnp.float32), on_policy_mask_N
      ),
  }


def _cached_divergence(hs_NxD, ws_DxV, tokens_N, mask_N, topk, spec, s: GKDSettings):
  """The top-k divergence against the teacher cache's (ids, log-probs) [B, C, k] (dataset rows).
  Positions past a completion (mask 0) get a uniform teacher over its k ids, so that no NaN of an
  empty distribution reaches the (masked) gradient."""
  ids_BxCxK, logprobs_BxCxK = topk
  k = ids_BxCxK.shape[-1]
  logprobs_NxK = jnp.where(mask_N[:, None] > 0, logprobs_BxCxK.reshape(-1, k), -jnp.log(k))
  layout = None if s.layout is None else Layout(s.layout.mesh, token_axes=s.layout.token_axes)
  return kernels.fused_linear_topk_divergence(
      hs_NxD,
      ws_DxV,
      ids_BxCxK.reshape(-1, k),
      logprobs_NxK,
      spec,
      tokens=tokens_N if spec.kind == "sampled_reverse_kl" else None,
      layout=layout,
  )


class _StudentSide(NamedTuple):
  """The student's side of a batch's completions, which every loss term reads ([N] = B·C)."""

  hidden_NxD: jax.Array
  unembed_DxV: jax.Array
  softcap: Optional[float]
  targets_N: jax.Array
  mask_N: jax.Array  # valid completion tokens, float32


class Term(NamedTuple):
  """One named term of the loss: its weighted value, its metrics, and the student's per-token
  entropy when computing the term gave it for free (else None)."""

  loss: Any
  metrics: dict
  student_entropy_N: Optional[jax.Array] = None


def _live_divergence_term(st, teacher, teacher_params, sequences, s, mismatch):
  """The divergence to a teacher in memory (a metric only when gkd.divergence_weight is 0), its
  entropy, and the sampler/loss log-prob mismatch on on-policy rows (`mismatch`: (sampler log-prob
  [N], on-policy token mask [N]) or None)."""
  tokens_BxT, mask_BxT, prompt_len = sequences
  ht_NxD = jax.lax.stop_gradient(
      _completion_hidden(teacher, teacher_params, tokens_BxT, mask_BxT, prompt_len, s)
  ).reshape(st.hidden_NxD.shape[0], -1)
  wt_DxV = jax.lax.stop_gradient(models.unembedding(teacher, teacher_params))
  spec = dataclasses.replace(
      s.divergence,
      student_softcap=st.softcap,
      teacher_softcap=teacher.config.final_logit_softcap,
  )
  hs_in, ws_in = (
      (st.hidden_NxD, st.unembed_DxV)
      if s.divergence_weight > 0
      else jax.lax.stop_gradient((st.hidden_NxD, st.unembed_DxV))
  )  # a metric only: no backward pass through it
  div_N, stats = _divergence(hs_in, ws_in, ht_NxD, wt_DxV, st.targets_N, spec, s)
  metrics, loss = {}, 0.0
  if mismatch is not None:
    metrics.update(_mismatch_metrics(stats.student_logprob, *mismatch))
  if s.divergence_weight > 0:
    metrics["divergence"] = masked_mean(div_N, st.mask_N)
    loss = s.divergence_weight * metrics["divergence"]
  metrics["teacher_entropy"] = masked_mean(stats.teacher_entropy, st.mask_N)
  return Term(loss, metrics, stats.student_entropy)


def _cached_divergence_term(st, teacher_topk, s):
  """The divergence to a teacher cache's top-k on dataset completions (gkd.teacher_cache)."""
  spec = dataclasses.replace(s.divergence, student_softcap=st.softcap)
  div_N = _cached_divergence(
      st.hidden_NxD, st.unembed_DxV, st.targets_N, st.mask_N, teacher_topk, spec, s
  )
  divergence = masked_mean(div_N, st.mask_N)
  return Term(s.divergence_weight * divergence, {"divergence": divergence})


def _cross_entropy_term(st, ce_mask_N, s):
  """The SFT term: cross-entropy on dataset completions (never on the student's own samples)."""
  ce_N = kernels.cross_entropy(st.hidden_NxD, st.unembed_DxV, st.targets_N, softcap=st.softcap)
  cross_entropy = masked_mean(ce_N, ce_mask_N)
  return Term(s.ce_weight * cross_entropy, {"cross_entropy": cross_entropy})


def loss_fn(
    params,
    teacher_params,
    student,
    teacher,
    tokens_BxT,
    mask_BxT,
    prompt_len,
    loss_mask_BxC,
    on_policy_B,
    s: GKDSettings,
    sample_logprob_BxC=None,
    teacher_topk=None,
):
  """Scalar loss and metrics for one sequence batch (prompt + chosen completion): the sum of the
  terms that apply (`Term`s: the divergence to a live or to a cached teacher, the cross-entropy on
  dataset rows), each reporting its own metrics, and the student's entropy.

  `sample_logprob_BxC`: the log-probabilities the sampler recorded for on-policy rows; when given
  and `sampler_matches_loss(s)`, the mismatch with the loss's own log-probabilities of the same
  tokens is reported (from the divergence's value pass: no extra vocabulary pass).
  `teacher_topk`: (ids, log-probs) [B, C, k] from a teacher cache, used when `teacher` is None."""
  targets_BxC = tokens_BxT[:, prompt_len:]
  b, c = targets_BxC.shape
  hs_BxCxD = _completion_hidden(student, params, tokens_BxT, mask_BxT, prompt_len, s, s.remat)
  st = _StudentSide(
      hs_BxCxD.reshape(b * c, -1),
      models.unembedding(student, params),
      student.config.final_logit_softcap,
      targets_BxC.reshape(-1),
      loss_mask_BxC.reshape(-1).astype(jnp.float32),
  )
  terms = []
  if teacher is not None:
    mismatch = None
    if sample_logprob_BxC is not None and sampler_matches_loss(s):
      on_policy_N = (loss_mask_BxC * on_policy_B[:, None]).reshape(-1)
      mismatch = (sample_logprob_BxC.reshape(-1), on_policy_N)
    sequences = (tokens_BxT, mask_BxT, prompt_len)
    terms.append(_live_divergence_term(st, teacher, teacher_params, sequences, s, mismatch))
  elif teacher_topk is not None and s.divergence_weight > 0:
    terms.append(_cached_divergence_term(st, teacher_topk, s))
  if s.ce_weight > 0:
    terms.append(
        _cross_entropy_term(st, (loss_mask_BxC * (1.0 - on_policy_B[:, None])).reshape(-1), s)
    )
  loss, metrics, student_entropy_N = 0.0, {}, None
  for term in terms:
    loss = loss + term.loss
    metrics.update(term.metrics)
    if student_entropy_N is None:
      student_entropy_N = term.student_entropy_N
  if student_entropy_N is None:
    student_entropy_N = _entropy(st.hidden_NxD, st.unembed_DxV, st.softcap, s)
  metrics["student_entropy"] = masked_mean(student_entropy_N, st.mask_N)
  metrics["loss"] = loss
  return loss, metrics


def train_step(
    state: TrainState,
    teacher_params,
    batch,
    rng,
    *,
    student,
    teacher,
    optimizer,
    settings: GKDSettings,
):
  """One GKD update. Pure: jit it with `functools.partial` over the keyword-only statics."""
  rng = jax.random.fold_in(rng, state.step)
  comp_BxC, cmask_BxC, on_policy_B, sample_logprob_BxC = choose_completions(
      student, state.params, teacher, teacher_params, batch, rng, settings
  )
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, metrics), grads = grad_fn(
      state.params,
      teacher_params,
      student,
      teacher,
      *_sequences(batch, comp_BxC, cmask_BxC),
      on_policy_B,
      settings,
      sample_logprob_BxC,
      _teacher_topk(batch),
  )
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # A step whose loss, gradient or new parameters are not all finite is never applied: the state
  # keeps its old params and optimizer state (the trainer then stops or counts the step).
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm) & _all_finite(params)
  params, opt_state = jax.tree.map(
      lambda new, old: jnp.where(finite, new, old),
      (params, opt_state),
      (state.params, state.opt_state),
  )
  metrics.update(
      nonfinite=1.0 - finite.astype(jnp.float32),
      on_policy_fraction=jnp.mean(on_policy_B),
      completion_length=jnp.mean(jnp.sum(cmask_BxC, axis=1).astype(jnp.float32)),
      grad_norm=grad_norm,
      num_tokens=jnp.sum(cmask_BxC).astype(jnp.float32),
  )
  return (
      TrainState(
          step=state.step + 1,
          params=params,
          opt_state=opt_state,
          nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
      ),
      metrics,
  )


def _sequences(batch, completion_BxC, completion_mask_BxC):
  """loss_fn's (tokens [B,T], mask [B,T], prompt length, loss mask [B,C]) of prompt + completion."""
  return (
      jnp.concatenate([batch["prompt_tokens"], completion_BxC], axis=1),
      jnp.concatenate([batch["prompt_mask"], completion_mask_BxC], axis=1),
      batch["prompt_tokens"].shape[1],
      completion_mask_BxC,
  )


def _teacher_topk(batch):
  if "teacher_topk_ids" not in batch:
    return None
  return batch["teacher_topk_ids"], batch["teacher_topk_logprobs"]


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def eval_step(params, teacher_params, batch, *, student, teacher, settings: GKDSettings):
  """Held-out loss terms on dataset completions (off-policy, no sampling, no update): token means
  over the batch, and `num_tokens`, the number of completion tokens they average over."""
  b = batch["prompt_tokens"].shape[0]
  # Report both terms whatever the training weights are.
  settings = dataclasses.replace(
      settings, ce_weight=1.0, divergence_weight=1.0 if teacher is not None else 0.0
  )
  sequences = _sequences(batch, batch["completion_tokens"], batch["completion_mask"])
  _, metrics = loss_fn(
      params, teacher_params, student, teacher, *sequences, jnp.zeros((b,), jnp.float32), settings
  )
  del metrics["loss"]
  # Every metric is a mean over these tokens: callers combine batches weighted by it.
  metrics["num_tokens"] = jnp.sum(batch["completion_mask"]).astype(jnp.float32)
  return metrics
