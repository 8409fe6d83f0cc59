"""Rollouts: sample G completions per prompt with m1jax.generate, grade them, and lay them
out as fixed-shape trainer rows.

The sampler's per-token log-probs are log_softmax(logits / T) of the full vocabulary
(m1jax/inference/sampling.py), the same quantity the trainer recomputes, so they serve as
pi_old directly; they are frozen for the whole generation batch (all mu updates).

Trainer rows are right-padded [N, seq_len]: BOS + prompt + completion (EOS included).
Per-token arrays are over the seq_len - 1 TARGET positions (token t+1 predicted at t), so
target j holds the log-prob of tokens[:, j + 1].
"""
import dataclasses

import numpy as np

from m1jax.rl.advantages import dynamic_sampling_keep, group_advantages
from m1jax.rl.rewards import soft_overlong_penalty, task_rewards

FINISH_EOS, FINISH_LENGTH, FINISH_EARLY_STOP = 0, 1, 2


@dataclasses.dataclass
class RolloutBatch:
  """One generation batch, N = P * G rows, row i belongs to prompt group i // G."""
  tokens_BT: np.ndarray        # int32 [N, seq_len], right-padded with pad_id
  token_mask_BT: np.ndarray    # bool [N, seq_len], real tokens
  mask_BT: np.ndarray          # float32 [N, seq_len-1], trained target positions
  old_logp_BT: np.ndarray      # float32 [N, seq_len-1], sampler log-probs (0 off-mask)
  rewards_N: np.ndarray        # float32, grader (+ overlong penalty)
  adv_N: np.ndarray            # float32, group-relative
  group_N: np.ndarray          # int32, prompt index within the batch
  kept_N: np.ndarray           # bool, row survives dynamic sampling
  lengths_N: np.ndarray        # int32, generated tokens (EOS counted)
  finish_N: np.ndarray         # int32, FINISH_*
  texts: list                  # decoded completions (EOS stripped)
  groups_kept: int


def sampler_seed(seed: int, step: int, salt: int = 0) -> int:
  """The sampler's PRNG seed for (seed, step): a pure function, so runs of different
  methods with the same seed draw with the same keys at every step (paired comparison)."""
  return int(np.random.default_rng([seed, step, salt, 0x5EED]).integers(0, 2**31 - 1))


def encode_prompt(tokenizer, prompt: str) -> list[int]:
  bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
  return bos + tokenizer.encode(prompt).tolist()


def generate_rows(model, params, tokenizer, prompts: list, s, seed: int, *,
                  temperature=None):
  """m1jax.generate at the RL sampling settings; -> (GenerateOutput, finish_N)."""
  from m1jax.inference import generate
  eos = tokenizer.eos_id
  out = generate(model, params, prompts, max_new_tokens=s.max_new_tokens,
                 temperature=s.temperature if temperature is None else temperature,
                 top_k=s.top_k, top_p=s.top_p, seed=seed,
                 eos_ids=() if eos is None else (eos,), pad_id=tokenizer.pad_id,
                 early_stop_tokens=s.early_stop_tokens, early_stop_prob=s.early_stop_prob)
  return out, finish_reasons(out, eos, s.max_new_tokens)


def finish_reasons(out, eos, max_new_tokens: int) -> np.ndarray:
  """FINISH_* per row of a GenerateOutput: EOS when its last token is `eos`, LENGTH when it
  used all max_new_tokens, otherwise the M1 early stop."""
  N = len(out.lengths)
  finish = np.full((N,), FINISH_EARLY_STOP, np.int32)
  for i in range(N):
    L = int(out.lengths[i])
    if eos is not None and L > 0 and out.tokens[i, L - 1] == eos:
      finish[i] = FINISH_EOS
    elif L >= max_new_tokens:
      finish[i] = FINISH_LENGTH
  return finish


def completion_text(tokenizer, tokens) -> str:
  eos = tokenizer.eos_id
  ids = [int(t) for t in tokens if eos is None or int(t) != eos]
  return tokenizer.decode(ids)


def sample_rollouts(model, params, tokenizer, task, examples: list, s, seed: int
                    ) -> RolloutBatch:
  """G samples for each of `examples` (P of them), graded, with advantages and the
  dynamic-sampling filter applied; `s` is an m1jax.rl.config.RLSettings."""
  G, P = s.num_generations, len(examples)
  prompts = [encode_prompt(tokenizer, ex.prompt) for ex in examples for _ in range(G)]
  longest = max(len(p) for p in prompts)
  if longest + s.max_new_tokens > s.seq_len:
    raise ValueError(f"rl.seq_len={s.seq_len} is shorter than the longest prompt "
                     f"({longest} tokens) + rl.max_new_tokens={s.max_new_tokens}")
  out, finish = generate_rows(model, params, tokenizer, prompts, s, seed)
  N, T = len(prompts), s.seq_len
  tokens = np.full((N, T), tokenizer.pad_id, np.int32)
  token_mask = np.zeros((N, T), bool)
  mask = np.zeros((N, T - 1), np.float32)
  old_logp = np.zeros((N, T - 1), np.float32)
  texts = []
  for i, prompt in enumerate(prompts):
    p, L = len(prompt), int(out.lengths[i])
    tokens[i, :p] = prompt
    tokens[i, p:p + L] = out.tokens[i, :L]
    token_mask[i, :p + L] = True
    mask[i, p - 1:p + L - 1] = 1.0
    old_logp[i, p - 1:p + L - 1] = out.log_probs[i, :L]
    texts.append(completion_text(tokenizer, out.tokens[i, :L]))
  row_examples = [ex for ex in examples for _ in range(G)]
  rewards = task_rewards(task, row_examples, texts)
  rewards = rewards + soft_overlong_penalty(out.lengths, s.max_new_tokens, s.overlong_buffer,
                                            s.overlong_penalty)
  adv = group_advantages(rewards.reshape(P, G), std_normalize=s.std_normalize,
                         ddof=s.std_ddof, eps=s.adv_eps).reshape(N)
  early = finish == FINISH_EARLY_STOP
  if s.truncated_policy == "mask":
    mask[early] = 0.0
  elif s.truncated_policy == "zero_adv":
    adv = np.where(early, 0.0, adv).astype(np.float32)
  keep_P = (dynamic_sampling_keep(rewards.reshape(P, G)) if s.dynamic_sampling
            else np.ones((P,), bool))
  return RolloutBatch(tokens_BT=tokens, token_mask_BT=token_mask, mask_BT=mask,
                      old_logp_BT=old_logp, rewards_N=rewards, adv_N=adv,
                      group_N=np.repeat(np.arange(P, dtype=np.int32), G),
                      kept_N=np.repeat(keep_P, G), lengths_N=out.lengths.astype(np.int32),
                      finish_N=finish, texts=texts, groups_kept=int(keep_P.sum()))


def minibatches(batch: RolloutBatch, s, rng: np.random.Generator) -> list[dict]:
  """The kept rows, shuffled, in min(num_minibatches, kept) minibatches of nearly equal size,
  each padded to s.minibatch_rows rows with mask 0 (fixed shapes: one compile). Fewer kept
  rows than minibatches means fewer updates (logged), never a minibatch of padding."""
  kept = np.flatnonzero(batch.kept_N)
  if kept.size == 0:
    return []
  order = kept[rng.permutation(kept.size)]
  chunks = np.array_split(order, min(s.num_minibatches, order.size))
  out = []
  for rows in chunks:
    take = np.concatenate([rows, np.full(s.minibatch_rows - rows.size, rows[0])])
    real = np.arange(s.minibatch_rows) < rows.size
    out.append({
        "tokens_BT": batch.tokens_BT[take], "token_mask_BT": batch.token_mask_BT[take],
        "mask_BT": batch.mask_BT[take] * real[:, None],
        "old_logp_BT": batch.old_logp_BT[take], "adv_B": batch.adv_N[take],
        # Padding rows get group -1 so they never join a real group's normaliser.
        "group_B": np.where(real, batch.group_N[take], -1).astype(np.int32),
        "rows": take})
  return out


def mismatch_metrics(sampler_logp, trainer_logp, mask) -> dict:
  """Train/infer agreement over the masked tokens (M1 report §3.2): Pearson correlation of
  the probabilities, mean/max |delta log p|, and the k3 KL estimate of sampler vs trainer."""
  m = np.asarray(mask) > 0
  a = np.asarray(sampler_logp, np.float64)[m]
  b = np.asarray(trainer_logp, np.float64)[m]
  if a.size == 0:
    return {}
  pa, pb = np.exp(a), np.exp(b)
  pearson = float(np.corrcoef(pa, pb)[0, 1]) if a.size > 1 and pa.std() and pb.std() else 1.0
  d = b - a
  return {"train_infer/prob_pearson": pearson,
          "train_infer/logp_absdiff_mean": float(np.abs(d).mean()),
          "train_infer/logp_absdiff_max": float(np.abs(d).max()),
          "train_infer/k3": float(np.mean(np.exp(d) - d - 1))}
