"""`generate`: batched sampling with the hybrid cache, returning tokens, log-probs and lengths.

Prompts of different lengths are left-padded (see m1jax/inference/cache.py), prefilled in
segments, then decoded one token per step (m1jax/inference/decode_loop.py): without a stream
callback the whole decode runs on the device in one jitted while_loop; with one, a host loop
hands each token over as it comes. Both stop as soon as every row is done.
"""
import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from m1jax.inference.cache import init_cache
from m1jax.inference.decode_loop import device_decode, host_decode
from m1jax.inference.segmented_prefill import DEFAULT_SEGMENT_LEN, left_pad, prefill
from m1jax.inference.sampling import validate_sampling

# Default shape bucket (tokens): see generate's length_bucket.
DEFAULT_LENGTH_BUCKET = 64
DECODE_LOOPS = ("auto", "device", "host")


@dataclasses.dataclass
class GenerateOutput:
  """tokens [B,N] int32 (pad_id after a row stops), log_probs [B,N] float32 (0 after a row
  stops), lengths [B] int32 generated tokens per row (an EOS counts), prompt_lengths [B];
  N = the number of decode steps run (<= max_new_tokens). numpy arrays."""
  tokens: np.ndarray
  log_probs: np.ndarray
  lengths: np.ndarray
  prompt_lengths: np.ndarray


def _prompts_from(input_ids, prompt_lengths) -> list[list[int]]:
  """A ragged list of sequences, or a [B,T] array with optional right-padded lengths."""
  if isinstance(input_ids, (list, tuple)) and (len(input_ids) == 0 or
                                               np.ndim(input_ids[0]) == 1):
    if prompt_lengths is not None:
      raise ValueError("generate: prompt_lengths is only for a [B,T] array of input_ids")
    prompts = [np.asarray(p).reshape(-1).tolist() for p in input_ids]
  else:
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
      raise ValueError(f"generate: input_ids must be a [B,T] array or a list of 1-D token "
                       f"sequences; got shape {ids.shape}")
    lengths = [ids.shape[1]] * ids.shape[0] if prompt_lengths is None else list(prompt_lengths)
    if len(lengths) != ids.shape[0] or any(not 0 <= n <= ids.shape[1] for n in lengths):
      raise ValueError(f"generate: prompt_lengths must be B={ids.shape[0]} values in "
                       f"[0, {ids.shape[1]}]; got {lengths}")
    prompts = [ids[b, :n].tolist() for b, n in enumerate(lengths)]
  if not prompts:
    raise ValueError("generate: no prompts (empty batch)")
  for b, p in enumerate(prompts):
    if not p:
      raise ValueError(f"generate: prompt {b} is empty; every prompt needs >= 1 token")
  return prompts


def _validate_ids(prompts, vocab_size: int) -> None:
  for b, p in enumerate(prompts):
    arr = np.asarray(p)
    if not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"generate: prompt {b} holds non-integer tokens ({arr.dtype})")
    bad = arr[(arr < 0) | (arr >= vocab_size)]
    if bad.size:
      raise ValueError(f"generate: prompt {b} has token id {int(bad[0])} outside "
                       f"[0, vocab_size={vocab_size})")


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def generate(model, params, input_ids, *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_ids: Sequence[int] = (),
             pad_id: int = 0, prompt_lengths: Optional[Sequence[int]] = None,
             max_len: Optional[int] = None, prefill_segment_len: int = DEFAULT_SEGMENT_LEN,
             early_stop_tokens: Optional[int] = None, early_stop_prob: float = 0.99,
             stream: Optional[Callable[[np.ndarray, np.ndarray], None]] = None,
             length_bucket: int = DEFAULT_LENGTH_BUCKET,
             decode_loop: str = "auto") -> GenerateOutput:
  """Samples up to `max_new_tokens` tokens after each prompt.

  Args:
    model: a MiniMaxM1ForCausalLM (only its config is used).
    params: its params.
    input_ids: a list of 1-D token sequences (any lengths >= 1), or a [B,T] array whose
      rows are the prompts, right-padded when `prompt_lengths` is given.
    max_new_tokens: decode steps at most.
    temperature: 0 = greedy (argmax); > 0 samples from softmax(logits / temperature).
    top_k: keep the k most likely tokens (0 = off). top_p: nucleus mass in (0, 1].
    seed: PRNG seed; the same seed and batch give the same tokens.
    eos_ids: a row stops after emitting any of these (the EOS is counted and returned).
    pad_id: filler for finished rows' tokens and for padding.
    max_len: KV/cache capacity in tokens (default: longest prompt + max_new_tokens, rounded
      up to a multiple of length_bucket); a prompt plus max_new_tokens beyond it is an error.
    prefill_segment_len: prompt tokens per prefill call (bounds prefill memory).
    early_stop_tokens: the M1 report's early stop: a row stops after this many consecutive
      tokens each with probability > early_stop_prob (report: 3000 at 0.99). None = off.
    stream: called after every step with (tokens_B, emitted_B) numpy arrays.
    length_bucket: compiled programs are keyed by shapes, so nearby lengths share them: the
      default capacity is rounded up to a multiple of this, and the batch is left-padded to
      a multiple of min(length_bucket, prefill_segment_len) tokens when the capacity has
      room (left padding is exact, see m1jax/inference/cache.py). 1 = exact shapes.
    decode_loop: "device" (one jitted while_loop, no host sync per token), "host" (a Python
      loop around the jitted decode step; needed by `stream`), or "auto" (host when streaming,
      else device). Both give the same tokens, log-probs and lengths.

  Returns:
    GenerateOutput. log_probs are log_softmax(logits / temperature) (temperature 0: of the
    raw logits) of the sampled token, from float32 logits (lm_head in fp32 by default).
  """
  cfg = model.config
  validate_sampling(temperature, top_k, top_p)
  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"generate: max_new_tokens must be an int >= 1; got {max_new_tokens!r}")
  if early_stop_tokens is not None and (not isinstance(early_stop_tokens, int)
                                        or early_stop_tokens < 1):
    raise ValueError(f"generate: early_stop_tokens must be None or an int >= 1; got "
                     f"{early_stop_tokens!r}")
  if not 0 <= early_stop_prob < 1:
    raise ValueError(f"generate: early_stop_prob must be in [0, 1); got {early_stop_prob!r}")
  prompts = _prompts_from(input_ids, prompt_lengths)
  _validate_ids(prompts, cfg.vocab_size)
  if isinstance(length_bucket, bool) or not isinstance(length_bucket, int) or length_bucket < 1:
    raise ValueError(f"generate: length_bucket must be an int >= 1; got {length_bucket!r}")
  if decode_loop not in DECODE_LOOPS:
    raise ValueError(f"generate: decode_loop must be one of {DECODE_LOOPS}; got "
                     f"{decode_loop!r}")
  if decode_loop == "device" and stream is not None:
    raise ValueError("generate: stream needs decode_loop='host' (or 'auto'); the device loop "
                     "hands back no tokens until it ends")
  if prefill_segment_len < 1:
    raise ValueError(f"generate: prefill_segment_len must be >= 1; got {prefill_segment_len}")
  longest = max(len(p) for p in prompts)
  capacity = _round_up(longest + max_new_tokens, length_bucket) if max_len is None else max_len
  if longest + max_new_tokens > capacity:
    raise ValueError(f"generate: the longest prompt ({longest} tokens) plus max_new_tokens "
                     f"({max_new_tokens}) = {longest + max_new_tokens} exceeds the cache "
                     f"capacity max_len={capacity}")
  # Slots used: the padded prompt plus max_new_tokens - 1 decode writes (the last sampled
  # token is never fed back), so pad only where that still fits.
  padded_len = _round_up(longest, min(length_bucket, prefill_segment_len))
  if padded_len + max_new_tokens - 1 > capacity:
    padded_len = longest

  ids_BT, mask_BT = left_pad(prompts, pad_id, padded_len)
  B = len(prompts)
  cache = init_cache(cfg, B, capacity)
  logits_BV, cache = prefill(cfg, params, cache, ids_BT, mask_BT, prefill_segment_len)

  key = jax.random.key(seed)
  eos_tokens = jnp.asarray(list(eos_ids), jnp.int32)
  sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p,
                  stop_after=early_stop_tokens, stop_prob=early_stop_prob)
  if decode_loop == "host" or (decode_loop == "auto" and stream is not None):
    tokens, log_probs, lengths = host_decode(cfg, params, cache, logits_BV, key, eos_tokens,
                                             pad_id, max_new_tokens, sampling, stream)
  else:
    tokens, log_probs, lengths = device_decode(
        cfg, params, cache, logits_BV, key, eos_tokens, pad_id, max_new_tokens, sampling,
        width=_round_up(max_new_tokens, length_bucket))
  return GenerateOutput(tokens=tokens, log_probs=log_probs, lengths=lengths,
                        prompt_lengths=np.asarray([len(p) for p in prompts], np.int32))
