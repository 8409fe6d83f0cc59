"""generate's two decode loops over one sampling step, with the same results:

  * host: a Python loop around the jitted decode step, reading the stop flags back after
    every token (one device->host sync per token). It serves streaming, and is the
    reference the device loop is tested against.
  * device: the whole decode in one jitted `lax.while_loop` (sampling, EOS, the M1 early
    stop, max length): no host sync until it ends. Tokens go into a [B, width] buffer,
    width = max_new_tokens rounded up to the length bucket, so nearby lengths share a program.

Both sample token `step` with the key fold_in(key, step) and decode only when another token
is still needed, so they run the same decode steps on the same inputs.
"""
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from m1jax.config import ModelConfig
from m1jax.inference.forward import decode_fn, decode_step
from m1jax.inference.sampling import sample_tokens


@functools.partial(jax.jit, static_argnames=("temperature", "top_k", "top_p", "stop_after",
                                             "stop_prob"))
def sample_step(logits_BV, key, step, done_B, run_B, eos_tokens, pad_id, *, temperature,
                top_k, top_p, stop_after, stop_prob):
  """Samples one token per row and updates the stop flags; finished rows emit pad_id."""
  tokens_B, log_prob_B = sample_tokens(logits_BV, jax.random.fold_in(key, step), temperature,
                                       top_k, top_p)
  tokens_B = jnp.where(done_B, pad_id, tokens_B)
  log_prob_B = jnp.where(done_B, 0.0, log_prob_B)
  new_done_B = done_B | jnp.isin(tokens_B, eos_tokens)
  if stop_after is not None:
    # M1 report: stop after `stop_after` consecutive tokens each with probability > stop_prob.
    confident_B = jnp.exp(log_prob_B) > jnp.float32(stop_prob)
    run_B = jnp.where(confident_B & ~done_B, run_B + 1, 0)
    new_done_B = new_done_B | (run_B >= stop_after)
  return tokens_B, log_prob_B, new_done_B, run_B


def host_decode(config: ModelConfig, params, cache, logits_BV, key, eos_tokens, pad_id: int,
                max_new_tokens: int, sampling: dict,
                stream: Optional[Callable[[np.ndarray, np.ndarray], None]] = None):
  """-> (tokens [B,N], log_probs [B,N], lengths [B]) numpy; N = the steps run."""
  B = logits_BV.shape[0]
  done_B = jnp.zeros((B,), bool)
  run_B = jnp.zeros((B,), jnp.int32)
  tokens, log_probs, lengths_B = [], [], np.zeros((B,), np.int32)
  for step in range(max_new_tokens):
    emitted_B = ~done_B
    tokens_B, log_prob_B, done_B, run_B = sample_step(
        logits_BV, key, step, done_B, run_B, eos_tokens, jnp.int32(pad_id), **sampling)
    tokens.append(tokens_B)
    log_probs.append(log_prob_B)
    emitted = np.asarray(emitted_B)
    lengths_B += emitted
    if stream is not None:
      stream(np.asarray(tokens_B), emitted)
    if step == max_new_tokens - 1 or bool(jnp.all(done_B)):
      break
    logits_BV, cache = decode_step(config, params, cache, tokens_B)
  return (np.stack([np.asarray(t) for t in tokens], axis=1),
          np.stack([np.asarray(x) for x in log_probs], axis=1), lengths_B)


@functools.lru_cache(maxsize=None)
def _device_program(config: ModelConfig, width: int, temperature: float, top_k: int,
                    top_p: float, stop_after: Optional[int], stop_prob: float):
  decode = decode_fn(config)
  sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, stop_after=stop_after,
                  stop_prob=stop_prob)

  def run(params, cache, logits_BV, key, eos_tokens, pad_id, max_new_tokens):
    B = logits_BV.shape[0]

    def sample(logits_BV, step, done_B, run_B, tokens_BN, log_probs_BN, lengths_B):
      tokens_B, log_prob_B, new_done_B, run_B = sample_step(
          logits_BV, key, step, done_B, run_B, eos_tokens, pad_id, **sampling)
      tokens_BN = jax.lax.dynamic_update_slice(tokens_BN, tokens_B[:, None], (0, step))
      log_probs_BN = jax.lax.dynamic_update_slice(log_probs_BN, log_prob_B[:, None],
                                                  (0, step))
      lengths_B = lengths_B + (~done_B).astype(jnp.int32)
      return tokens_B, new_done_B, run_B, tokens_BN, log_probs_BN, lengths_B

    first = sample(logits_BV, jnp.int32(0), jnp.zeros((B,), bool), jnp.zeros((B,), jnp.int32),
                   jnp.full((B, width), pad_id, jnp.int32), jnp.zeros((B, width), jnp.float32),
                   jnp.zeros((B,), jnp.int32))

    def cond(carry):
      step, _, _, done_B = carry[:4]
      return (step < max_new_tokens) & ~jnp.all(done_B)

    def body(carry):
      step, cache, tokens_B, done_B, run_B, tokens_BN, log_probs_BN, lengths_B = carry
      logits_BV, cache = decode(params, cache, tokens_B)
      return (step + 1, cache) + sample(logits_BV, step, done_B, run_B, tokens_BN,
                                        log_probs_BN, lengths_B)

    step, cache, _, _, _, tokens_BN, log_probs_BN, lengths_B = jax.lax.while_loop(
        cond, body, (jnp.int32(1), cache) + first)
    # The cache is returned (and dropped by the caller) so the donated input buffers can
    # back the loop's carry in place.
    return tokens_BN, log_probs_BN, lengths_B, step, cache

  return jax.jit(run, donate_argnums=(1,))


def device_decode(config: ModelConfig, params, cache, logits_BV, key, eos_tokens, pad_id: int,
                  max_new_tokens: int, sampling: dict, width: int):
  """As host_decode, in one jitted while_loop (`cache` is donated). `width` >=
  max_new_tokens is the token buffer's static width."""
  if width < max_new_tokens:
    raise ValueError(f"device_decode: width {width} < max_new_tokens {max_new_tokens}")
  program = _device_program(config, width, **sampling)
  tokens_BN, log_probs_BN, lengths_B, steps, _ = program(
      params, cache, logits_BV, key, eos_tokens, jnp.int32(pad_id), jnp.int32(max_new_tokens))
  steps = int(steps)  # the one host sync
  return (np.asarray(tokens_BN)[:, :steps], np.asarray(log_probs_BN)[:, :steps],
          np.asarray(lengths_B))
