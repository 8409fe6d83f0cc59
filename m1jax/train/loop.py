"""train_and_evaluate: the whole training run behind experiments/train.py.

Order of one step: next batch -> jitted step -> NaN guard -> metrics -> eval -> checkpoint ->
SIGTERM check. A checkpoint at step s holds the state after s updates and the data
iterator positioned at batch s, so restarting from it replays exactly what an
uninterrupted run would have done.
"""
import math
import os
import time

import jax
import ml_collections
import numpy as np

from m1jax import sharding
from m1jax.config import ModelConfig
from m1jax.flops import train_flops_per_token
from m1jax.model import MiniMaxM1ForCausalLM
from m1jax.train.checkpointing import Checkpointer
from m1jax.train.data import make_tokenizer, packed_dataset
from m1jax.train.evaluate import evaluate
from m1jax.train.init_from import load_init_params
from m1jax.train.metrics import MetricsWriter
from m1jax.train.optimizer import make_optimizer
from m1jax.train.plot import plot_curves
from m1jax.train.preemption import CheckpointTail
from m1jax.train.state import (abstract_train_state, init_train_state, state_shardings,
                               train_state_from_params)
from m1jax.train.step import batch_sharding, check_batch, make_train_step


def _validate(config) -> None:
  t = config.train
  for key in ("num_steps", "batch_size", "seq_len", "grad_accum_steps", "log_every",
              "eval_every", "checkpoint_every", "keep_checkpoints"):
    if not isinstance(t[key], int) or t[key] < (0 if key == "num_steps" else 1):
      raise ValueError(f"train.{key} must be a positive int, got {t[key]!r}")
  if (not isinstance(t.loss_chunk_tokens, int) or isinstance(t.loss_chunk_tokens, bool)
      or t.loss_chunk_tokens < 0):
    raise ValueError(f"train.loss_chunk_tokens must be an int >= 0 (0 = full logits), got "
                     f"{t.loss_chunk_tokens!r}")
  if t.batch_size % t.grad_accum_steps:
    raise ValueError(f"train.batch_size={t.batch_size} is not divisible by "
                     f"train.grad_accum_steps={t.grad_accum_steps}")


def _data_slices(config) -> tuple[int, list[int]]:
  """(slices in the global batch, the slices this process reads); see packed_dataset."""
  count, index = jax.process_count(), jax.process_index()
  slices = config.data.get("slices", 0) or count
  t = config.train
  if slices % count or t.batch_size % slices:
    raise ValueError(f"data.slices={slices} must be a multiple of the {count} processes and "
                     f"divide train.batch_size={t.batch_size}")
  per_process = slices // count
  return slices, list(range(index * per_process, (index + 1) * per_process))


def global_batch(local: dict, mesh) -> dict:
  """This process's rows -> global [B,T] arrays split over the mesh's batch axes (each
  process holds the rows its devices own; with one process, all of them)."""
  target = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(
      target, np.asarray(v), (v.shape[0] * jax.process_count(),) + v.shape[1:])
          for k, v in local.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one;
  otherwise from `train.init_from`'s params if set (m1jax/train/init_from.py), else random.

  Returns a summary dict: final step, the first and last eval results, whether it stopped on
  SIGTERM, and the paths it wrote. Raises FloatingPointError on a non-finite loss (the last
  good checkpoint stays), ValueError on bad input.
  """
  _validate(config)
  t = config.train
  model_config = ModelConfig.from_dict(config.model.to_dict())
  tokenizer = make_tokenizer(config.data, model_config.vocab_size)
  model = MiniMaxM1ForCausalLM(model_config)
  tx, schedule = make_optimizer(config.optimizer, t.num_steps)
  config_dict = config.to_dict()
  mesh = sharding.make_mesh(config.get("mesh", "fsdp=-1"))
  check_batch(mesh, t.batch_size, t.seq_len, t.grad_accum_steps)
  shardings = state_shardings(model, tx, mesh)

  os.makedirs(workdir, exist_ok=True)
  ckpt = Checkpointer(workdir, t.keep_checkpoints, t.async_checkpointing)
  num_slices, slices = _data_slices(config)
  dataset = packed_dataset(config.data, tokenizer, seq_len=t.seq_len,
                           batch_size=t.batch_size, seed=t.seed, split=0,
                           num_slices=num_slices, slices=slices)
  data_iter = iter(dataset)
  start = ckpt.latest_step()
  # A workdir's own checkpoint wins over init_from: rerunning a run that started from
  # converted weights resumes it rather than starting over.
  init_from = t.get("init_from", "") if start is None else ""
  if start is not None:
    ckpt.check_compatible(start, config_dict)
    # Restored straight into this mesh's shards, whatever mesh wrote the checkpoint.
    state = ckpt.restore(start, abstract_train_state(model, tx, mesh, shardings), data_iter)
    print(f"Resumed from {ckpt.directory}/{start}", flush=True)
  elif init_from:
    params = load_init_params(init_from, model_config)
    state = train_state_from_params(params, tx, mesh, shardings)
    print(f"Initialised params from {init_from} (fresh optimizer state)", flush=True)
  else:
    state = init_train_state(model, tx, jax.random.key(t.seed), mesh, shardings)
  train_step = make_train_step(model, tx, mesh, shardings, accum_steps=t.grad_accum_steps,
                               aux_coef=model_config.router_aux_loss_coef,
                               loss_chunk_tokens=t.loss_chunk_tokens)
  print(f"mesh {sharding.describe(mesh)} over {jax.device_count()} devices, "
        f"{jax.process_count()} process(es)", flush=True)
  step = int(state.step)

  # Every process computes the same (replicated) metrics; the first writes them to the
  # workdir, the others under <workdir>/process_<i>/ so no file has two writers.
  primary = jax.process_index() == 0
  writer = MetricsWriter(workdir if primary else os.path.join(workdir, f"process_"
                                                              f"{jax.process_index()}"),
                         t.tensorboard and primary)
  flops = train_flops_per_token(model_config, t.seq_len)
  peak = t.peak_flops_per_device * jax.device_count()
  summary = {"workdir": workdir, "start_step": step, "preempted": False}

  def run_eval(at_step):
    if t.eval_batches <= 0 and t.eval_examples <= 0:
      return
    results = evaluate(state.params, model, config, tokenizer)
    writer.write(at_step, results, console=True, prefix="eval/")
    summary.setdefault("first_eval", {"step": at_step, **results})
    summary["last_eval"] = {"step": at_step, **results}

  if step == 0 and t.eval_at_start:
    run_eval(0)
  window_tokens, window_dropped, window_start = 0, 0, time.perf_counter()
  save = lambda at: ckpt.save(at, state, data_iter, config_dict)
  with CheckpointTail(save, every=t.checkpoint_every, last_step=t.num_steps,
                      close=(ckpt.close, writer.close), last_saved=start) as tail:
    while step < t.num_steps:
      state, metrics = train_step(state, global_batch(next(data_iter), mesh))
      step += 1
      loss = float(metrics["loss"])  # also a sync point, so timings below are real
      if not math.isfinite(loss) or not bool(metrics["params_finite"]):
        ckpt.wait()
        what = "loss" if not math.isfinite(loss) else "parameters after the update"
        raise FloatingPointError(
            f"non-finite training {what} (loss {loss}) at step {step}; stopping. The "
            f"last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}. Lower "
            "optimizer.learning_rate or set optimizer.grad_clip_norm.")
      window_tokens += int(metrics["tokens"])
      window_dropped += int(metrics["moe/dropped"])
      if step % t.log_every == 0 or step == t.num_steps:
        elapsed = time.perf_counter() - window_start
        tokens_per_s = window_tokens / max(elapsed, 1e-9)
        logged = {"loss": loss, "ce_loss": metrics["ce_loss"],
                  "aux_loss": metrics["aux_loss"], "grad_norm": metrics["grad_norm"],
                  "lr": schedule(step - 1), "tokens_per_s": tokens_per_s,
                  # MoE assignments the padded expert-parallel exchange dropped in the window
                  # (0 unless moe_capacity_factor is below the worst case).
                  "moe/dropped": window_dropped,
                  "moe/drop_fraction": window_dropped / max(
                      window_tokens * model.config.num_experts_per_tok
                      * model.config.num_hidden_layers, 1)}
        if peak > 0:
          logged["mfu"] = tokens_per_s * flops / peak
        writer.write(step, logged, console=True, prefix="train/")
        window_tokens, window_dropped, window_start = 0, 0, time.perf_counter()
      if step % t.eval_every == 0 or step == t.num_steps:
        run_eval(step)
      if tail.after_step(step):
        break
  summary.update(step=step, last_checkpoint=tail.last_saved, preempted=tail.preempted)
  if t.plot and primary:
    summary["plot"] = plot_curves(workdir)
  return summary
