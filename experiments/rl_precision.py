"""Train/infer probability agreement on the SFT checkpoint: a miniature of the M1 report's
Fig. 3 (sampler vs trainer token probabilities, bf16 LM head vs fp32 LM head).

For each precision setting the SFT policy samples rollouts with m1jax.generate (hybrid
cache, recurrent lightning decode) and the trainer recomputes their log-probs with one
teacher-forced forward (chunked lightning); the two paths round differently, as an inference
engine and a training engine do.

  python -m experiments.rl_precision --sft=runs/tiny

Writes benchmarks/results/rl_precision.json and .png.
"""
import json
import os
import time

from absl import app
from absl import flags
from absl import logging

_SFT = flags.DEFINE_string("sft", "runs/tiny", "SFT trainer workdir (experiments.train).")
_PROMPTS = flags.DEFINE_integer("prompts", 16, "Prompts; each sampled num_generations times.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/rl_precision", "Output path stem.")

# (label, compute dtype of the body, LM head in fp32)
SETTINGS = (("fp32 body, fp32 head", "float32", True),
            ("bf16 body, fp32 head", "bfloat16", True),
            ("bf16 body, bf16 head", "bfloat16", False))


def main(argv):
  del argv
  # Orbax logs every restore at INFO; progress lines come from this script.
  logging.set_verbosity(logging.WARNING)
  import jax.numpy as jnp
  import numpy as np
  from configs import common
  from m1jax.model import MiniMaxM1ForCausalLM
  from m1jax.rl.config import resolve
  from m1jax.rl.loop import rl_task
  from m1jax.rl.rollout import mismatch_metrics, sample_rollouts
  from m1jax.rl.step import trainer_logprobs
  from m1jax.train.checkpointing import restore_trained_params
  from m1jax.train.data import make_tokenizer

  sft_config, sft_model, params = restore_trained_params(_SFT.value)
  rl = common.rl_config()
  rl.prompts_per_step = _PROMPTS.value
  rl.num_minibatches = 1
  s = resolve(rl)
  task = rl_task(sft_config)
  tokenizer = make_tokenizer(sft_config.data, sft_model.config.vocab_size)
  examples = [task.example(0, 2_000_000 + i) for i in range(s.prompts_per_step)]
  results, scatter = {}, {}
  for label, dtype, head_fp32 in SETTINGS:
    model = MiniMaxM1ForCausalLM(sft_model.config.replace(dtype=dtype,
                                                          lm_head_fp32=head_fp32))
    t0 = time.perf_counter()
    batch = sample_rollouts(model, params, tokenizer, task, examples, s, seed=7)
    trainer = np.asarray(trainer_logprobs(params, jnp.asarray(batch.tokens_BT),
                                          jnp.asarray(batch.token_mask_BT), model=model,
                                          temperature=s.temperature,
                                          loss_chunk_tokens=sft_config.train.loss_chunk_tokens))
    m = mismatch_metrics(batch.old_logp_BT, trainer, batch.mask_BT)
    mask = batch.mask_BT > 0
    m.update(tokens=int(mask.sum()), reward_mean=float(batch.rewards_N.mean()),
             seconds=time.perf_counter() - t0)
    results[label] = m
    scatter[label] = (np.exp(batch.old_logp_BT[mask]), np.exp(trainer[mask]))
    print(f"{label}: pearson {m['train_infer/prob_pearson']:.6f}, |dlogp| mean "
          f"{m['train_infer/logp_absdiff_mean']:.2e} max "
          f"{m['train_infer/logp_absdiff_max']:.2e} ({m['tokens']} tokens)", flush=True)

  from m1jax.train.plot import pyplot
  plt = pyplot()
  fig, axes = plt.subplots(1, len(SETTINGS), figsize=(5 * len(SETTINGS), 4.6))
  for ax, (label, _, _) in zip(axes, SETTINGS):
    x, y = scatter[label]
    ax.scatter(x, y, s=4, alpha=0.5)
    ax.plot([0, 1], [0, 1], color="gray", lw=0.8)
    ax.set_title(f"{label}\npearson {results[label]['train_infer/prob_pearson']:.6f}")
    ax.set_xlabel("sampler probability (m1jax.generate)")
    ax.set_ylabel("trainer probability (teacher-forced)")
  fig.tight_layout()
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  fig.savefig(_OUT.value + ".png", dpi=100)
  with open(_OUT.value + ".json", "w") as f:
    json.dump({"sft": _SFT.value, "sft_model": {"layers": sft_model.config.num_hidden_layers,
                                                "hidden": sft_model.config.hidden_size},
               "rows": s.rows, "temperature": s.temperature, "results": results}, f,
              indent=2)
  print(f"wrote {_OUT.value}.png and .json")


if __name__ == "__main__":
  app.run(main)
