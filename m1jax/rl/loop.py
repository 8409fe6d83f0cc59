"""train_rl: the RL run behind experiments/rl.py.

One rollout step: P prompts -> G samples each (m1jax.generate, pi_old = its log-probs,
frozen) -> rewards, group advantages, dynamic sampling -> mu minibatch updates
(m1jax.rl.step.make_rl_step) -> metrics -> eval -> checkpoint. Prompts, sampler keys and
minibatch permutations are pure functions of (rl.seed, step), so a checkpoint at step s
(params, optimizer state, update count and the step in its JSON) resumes exactly, and runs
of different algorithms with one seed are paired.
"""
import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from m1jax import sharding
from m1jax.config import ModelConfig
from m1jax.model import MiniMaxM1ForCausalLM
from m1jax.rl.checkpoint import RLCheckpointer
from m1jax.rl.config import resolve
from m1jax.rl.evaluate import eval_examples, evaluate_policy
from m1jax.rl.prompt_filter import read_prompt_indices, step_prompt_indices
from m1jax.rl.rollout import (FINISH_EARLY_STOP, FINISH_LENGTH, minibatches,
                              mismatch_metrics, sample_rollouts, sampler_seed)
from m1jax.rl.step import make_rl_step, trainer_logprobs
from m1jax.train.data import make_tokenizer
from m1jax.train.metrics import MetricsWriter
from m1jax.train.optimizer import make_optimizer
from m1jax.train.preemption import CheckpointTail
from m1jax.train.state import state_shardings, train_state_from_params

# Per-minibatch-index copies of these are logged as "<name>/mb<k>" (k from 1).
_PER_MINIBATCH = ("clip_ratio/high_mean", "clip_ratio/low_mean", "cispo/clip_frac",
                  "is_ratio/mean", "is_ratio/max")


def rl_task(config):
  """The task whose grader gives rewards: config.data names it (source must be "task")."""
  from m1jax.tasks import TASKS
  from m1jax.train.data.sources import data_task
  data = config.data
  if data.source != "task" or data.task not in TASKS:
    raise ValueError(f"RL needs a task with a grader: data.source={data.source!r}, "
                     f"data.task={data.task!r}; expected source 'task' and one of "
                     f"{sorted(TASKS)}")
  return data_task(data)


def load_sft_params(config, path: str):
  """Params of the SFT trainer workdir `path` (latest checkpoint), checked against config:
  the same architecture (implementation choices such as dtypes or kernels may differ), the
  same stack layout and the same tokenizer."""
  from m1jax.hf.converted import check_compatible
  from m1jax.train.checkpointing import restore_trained_params
  if not os.path.isdir(os.path.join(path, "checkpoints")):
    raise FileNotFoundError(f"rl.init_checkpoint={path!r} has no checkpoints/; train the "
                            f"SFT policy first: python -m experiments.train --workdir={path}")
  sft_config, sft_model, params = restore_trained_params(path)
  where = (f"rl.init_checkpoint={path!r}: the SFT checkpoint was trained with an "
           "incompatible config; it")
  mine = ModelConfig.from_dict(config.model.to_dict())
  check_compatible(sft_model.config, mine, where)
  if sft_model.config.is_scanned != mine.is_scanned:
    raise ValueError(f"{where} has a {'scanned' if sft_model.config.is_scanned else 'unrolled'}"
                     " layer stack and this config does not; set model.scan_layers to match")
  if sft_config.data.tokenizer != config.data.tokenizer:
    raise ValueError(f"{where} used tokenizer {sft_config.data.tokenizer!r}, this config "
                     f"{config.data.tokenizer!r}")
  return params


_TX_CACHE: dict = {}


def rl_optimizer(config, s):
  """The M1 AdamW (b1, b2, eps from config.optimizer), constant LR after warmup. Memoised on
  its settings: tx is a static argument of the jitted update, so runs with equal settings in
  one process (experiments/rl_compare.py) share one compile."""
  key = (tuple(sorted(config.optimizer.to_dict().items())), s.learning_rate, s.warmup_steps,
         s.weight_decay, s.grad_clip_norm, s.num_steps * s.mu)
  if key not in _TX_CACHE:
    _TX_CACHE[key] = _rl_optimizer(config, s)
  return _TX_CACHE[key]


def _rl_optimizer(config, s):
  opt = ml_collections.ConfigDict(config.optimizer.to_dict())
  opt.learning_rate, opt.warmup_steps = s.learning_rate, s.warmup_steps
  opt.schedule, opt.weight_decay, opt.grad_clip_norm = "constant", s.weight_decay, s.grad_clip_norm
  return make_optimizer(opt, max(s.num_steps * s.mu, 1))


@functools.lru_cache(maxsize=16)
def _rl_step(model, tx, mesh, s, loss_chunk_tokens):
  """(state shardings, jitted update), memoised like rl_optimizer: runs with equal settings
  in one process (experiments/rl_compare.py) share one jit, hence one compile."""
  shardings = state_shardings(model, tx, mesh)
  return shardings, make_rl_step(model, tx, mesh, shardings, settings=s,
                                 loss_chunk_tokens=loss_chunk_tokens)


def _rollout_metrics(batch, s) -> dict:
  P = s.prompts_per_step
  r = batch.rewards_N.reshape(P, -1)
  lengths = batch.lengths_N
  return {"reward/mean": float(batch.rewards_N.mean()), "reward/std": float(batch.rewards_N.std()),
          "frac_reward_zero_std": float(np.mean(np.ptp(r, axis=1) == 0)),
          "groups_kept": batch.groups_kept,
          "response_length/mean": float(lengths.mean()),
          "response_length/min": int(lengths.min()), "response_length/max": int(lengths.max()),
          "response_length/clip_ratio": float(np.mean(batch.finish_N == FINISH_LENGTH)),
          "finish/early_stop_frac": float(np.mean(batch.finish_N == FINISH_EARLY_STOP))}


def _update_metrics(per_update: list[dict]) -> dict:
  """Means over the step's updates (max/min for the ratio extremes), plus per-index copies."""
  if not per_update:
    return {"updates": 0}
  out = {"updates": len(per_update)}
  for name in per_update[0]:
    if name in ("params_finite", "tokens", "tokens@lowp"):
      continue
    values = [float(m[name]) for m in per_update]
    out[name] = (max(values) if name.endswith("/max") else
                 min(values) if name.endswith("/min") else float(np.mean(values)))
  for k, m in enumerate(per_update, 1):
    for name in _PER_MINIBATCH:
      if name in m:
        out[f"{name}/mb{k}"] = float(m[name])
  return out


class RLRun:
  """Everything one RL run needs, built once; `step(i)` runs rollout step i."""

  def __init__(self, config, workdir: str | None, *, params=None, verbose: bool = True):
    self.config, self.workdir, self.verbose = config, workdir, verbose
    self.s = s = resolve(config.rl)
    self.model_config = ModelConfig.from_dict(config.model.to_dict())
    if not self.model_config.lm_head_fp32:
      print("warning: model.lm_head_fp32 is False; the M1 report (§3.2) needed the fp32 head "
            "for trainer and sampler log-probs to agree", flush=True)
    self.model = MiniMaxM1ForCausalLM(self.model_config)
    self.tokenizer = make_tokenizer(config.data, self.model_config.vocab_size)
    self.task = rl_task(config)
    self.tx, self.schedule = rl_optimizer(config, s)
    if params is None:
      params = load_sft_params(config, s.init_checkpoint)
    # The SFT trainer's machinery: the state in its shardings on config.mesh (Auto axes),
    # the update jitted by m1jax.train.step.jit_step with the state donated.
    self.mesh = sharding.make_mesh(config.get("mesh", "fsdp=-1"))
    self.loss_chunk_tokens = config.train.loss_chunk_tokens
    self.shardings, self.update = _rl_step(self.model, self.tx, self.mesh, s,
                                           self.loss_chunk_tokens)
    # A copy (may_alias=False): the update donates the state's buffers, and the caller's
    # params (rl_compare reuses one SFT tree for every run) must outlive it.
    self.state = train_state_from_params(
        jax.device_put(params, self.shardings.params, may_alias=False), self.tx, self.mesh,
        self.shardings)
    self.ref_params = (jax.device_put(params, self.shardings.params, may_alias=False)
                       if s.kl_coef > 0 else None)
    self.eval_set = eval_examples(self.task, s)
    # pass@k-filtered prompt indices (experiments/rl_filter_data.py), cycled; None = the
    # stream from rl.prompt_offset.
    self.prompt_indices = (read_prompt_indices(s.prompt_file, s.seed) if s.prompt_file
                           else None)

  def evaluate(self) -> dict:
    return evaluate_policy(self.model, self.state.params, self.tokenizer, self.task, self.s,
                           self.eval_set)

  def examples(self, step: int) -> list:
    s = self.s
    return [self.task.example(s.seed, i, split=0)
            for i in step_prompt_indices(s, step, self.prompt_indices)]

  def step(self, step: int, check_mismatch: bool = False) -> dict:
    """Rollout step `step` (0-based): generate, update mu times. Returns its metrics."""
    s = self.s
    t0 = time.perf_counter()
    batch = sample_rollouts(self.model, self.state.params, self.tokenizer, self.task,
                            self.examples(step), s, sampler_seed(s.seed, step))
    t_gen = time.perf_counter() - t0
    metrics = _rollout_metrics(batch, s)
    recompute = s.old_logprobs == "trainer" or check_mismatch or s.kl_coef > 0
    if recompute:
      t1 = time.perf_counter()
      trainer_logp = np.asarray(trainer_logprobs(
          self.state.params, jnp.asarray(batch.tokens_BT), jnp.asarray(batch.token_mask_BT),
          model=self.model, temperature=s.temperature,
          loss_chunk_tokens=self.loss_chunk_tokens))
      metrics.update(mismatch_metrics(batch.old_logp_BT, trainer_logp, batch.mask_BT))
      metrics["time/recompute"] = time.perf_counter() - t1
      if s.old_logprobs == "trainer":
        batch.old_logp_BT = np.where(batch.mask_BT > 0, trainer_logp, 0.0).astype(np.float32)
    ref_logp = None
    if s.kl_coef > 0:
      ref_logp = np.asarray(trainer_logprobs(
          self.ref_params, jnp.asarray(batch.tokens_BT), jnp.asarray(batch.token_mask_BT),
          model=self.model, temperature=s.temperature,
          loss_chunk_tokens=self.loss_chunk_tokens))
    t2 = time.perf_counter()
    per_update = []
    for epoch in range(s.num_epochs):
      rng = np.random.default_rng([s.seed, step, epoch, 0x3B])
      for mb in minibatches(batch, s, rng):
        rows = mb.pop("rows")
        mb["ref_logp_BT"] = (np.zeros_like(mb["old_logp_BT"]) if ref_logp is None
                             else ref_logp[rows])
        self.state, m = self.update(self.state, mb)
        m = jax.device_get(m)
        if not math.isfinite(float(m["loss"])) or not bool(m["params_finite"]):
          raise FloatingPointError(f"non-finite RL loss or params at rollout step {step + 1} "
                                   f"(loss {float(m['loss'])}); lower rl.learning_rate")
        per_update.append(m)
    t_upd = time.perf_counter() - t2
    metrics.update(_update_metrics(per_update))
    generated = int(batch.lengths_N.sum())
    trained = sum(float(m["tokens"]) for m in per_update)
    metrics.update({"lr": float(self.schedule(max(int(self.state.step) - 1, 0))),
                    "time/generate": t_gen, "time/update": t_upd,
                    "time/step": time.perf_counter() - t0,
                    "tokens/s_generate": generated / max(t_gen, 1e-9),
                    "tokens/s_update": trained / max(t_upd, 1e-9)})
    return metrics


def _progress(step, m, eval_result=None) -> str:
  parts = [f"[rl {step:4d}]", f"reward={m['reward/mean']:.3f}",
           f"kept={m['groups_kept']}", f"len={m['response_length/mean']:.1f}"]
  for key, label in (("clip_ratio/high_mean", "clip_hi"), ("cispo/clip_frac", "cispo_clip"),
                     ("is_ratio/max", "r_max"), ("entropy", "H")):
    if key in m:
      parts.append(f"{label}={m[key]:.3g}")
  parts.append(f"t={m['time/step']:.1f}s")
  return " ".join(parts)


def train_rl(config: ml_collections.ConfigDict, workdir: str, *, params=None,
             verbose: bool = True) -> dict:
  """Runs config.rl in `workdir` (resuming from its latest checkpoint); returns a summary
  with the first and last evals. `params` (optional) replaces rl.init_checkpoint."""
  run = RLRun(config, workdir, params=params, verbose=verbose)
  s = run.s
  os.makedirs(workdir, exist_ok=True)
  ckpt = RLCheckpointer(workdir, s.keep_checkpoints)
  config_dict = config.to_dict()
  start = ckpt.latest_step()
  step = 0
  if start is not None:
    run.state, position, saved = ckpt.restore(start, run.state)
    if saved.get("rl", {}).get("seed") != s.seed:
      raise ValueError(f"{ckpt.directory}/{start} was written with rl.seed="
                       f"{saved.get('rl', {}).get('seed')!r}, this run has {s.seed}: its "
                       "prompts and sampler keys would differ. Use a fresh --workdir.")
    step = int(position["rollout_step"])
    if verbose:
      print(f"Resumed RL from {ckpt.directory}/{start}", flush=True)
  writer = MetricsWriter(workdir, s.tensorboard)
  summary = {"workdir": workdir, "start_step": step, "preempted": False,
             "algorithm": s.algorithm}

  def run_eval(at):
    if s.eval_examples <= 0:
      return
    t0 = time.perf_counter()
    result = run.evaluate()
    writer.write(at, {**result, "time": time.perf_counter() - t0}, console=verbose,
                 prefix="eval/")
    summary.setdefault("first_eval", {"step": at, **result})
    summary["last_eval"] = {"step": at, **result}

  if step == 0:
    run_eval(0)
  save = lambda at: ckpt.save(at, run.state, {
      "rollout_step": at, "seed": s.seed, "prompt_file": s.prompt_file,
      "next_prompt_index": step_prompt_indices(s, at, run.prompt_indices)[0]}, config_dict)
  with CheckpointTail(save, every=s.checkpoint_every, last_step=s.num_steps,
                      close=(ckpt.close, writer.close), last_saved=start,
                      what="RL step") as tail:
    while step < s.num_steps:
      check = s.mismatch_check_every > 0 and step % s.mismatch_check_every == 0
      metrics = run.step(step, check_mismatch=check)
      step += 1
      writer.write(step, metrics, prefix="train/")
      if verbose and (step % s.log_every == 0 or step == s.num_steps):
        print(_progress(step, metrics), flush=True)
      if step % s.eval_every == 0 or step == s.num_steps:
        run_eval(step)
      if tail.after_step(step):
        break
  summary.update(step=step, last_checkpoint=tail.last_saved, preempted=tail.preempted)
  if s.plot:
    from m1jax.rl.plot import plot_rl
    summary["plot"] = plot_rl(workdir)
  return summary
