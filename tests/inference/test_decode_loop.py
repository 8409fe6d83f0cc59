"""generate's on-device while_loop against the host loop (its reference): the same tokens,
log-probs, lengths, stop step and finish reasons, greedy and sampled, with EOS and the M1
early stop. Same config, prompts, segment length, capacity and sampling settings as
test_generate.py, so the compiled programs are shared with it."""
import numpy as np
import pytest

import m1jax
from m1jax.model import MiniMaxM1ForCausalLM
from m1jax.rl.rollout import FINISH_EARLY_STOP, FINISH_EOS, FINISH_LENGTH, finish_reasons
from tests.helpers import random_params, tiny_config

PROMPTS = [[5, 17, 3], [40, 2, 9, 88, 61, 7, 12, 30, 11, 70, 45]]
SAMPLED = dict(temperature=1.0, top_k=20, top_p=0.9)
SEG = 5


@pytest.fixture(scope="module")
def model_and_params():
  cfg = tiny_config((0, 0, 0, 1) * 2)
  return MiniMaxM1ForCausalLM(cfg), random_params(cfg, 0)


def _both(model, params, prompts=PROMPTS, **kw):
  out = {loop: m1jax.generate(model, params, prompts, prefill_segment_len=SEG,
                              decode_loop=loop, **kw) for loop in ("host", "device")}
  host, device = out["host"], out["device"]
  # Bitwise: the loop body runs the same decode and sampling programs on the same inputs.
  np.testing.assert_array_equal(device.tokens, host.tokens)
  np.testing.assert_array_equal(device.log_probs, host.log_probs)
  np.testing.assert_array_equal(device.lengths, host.lengths)
  np.testing.assert_array_equal(device.prompt_lengths, host.prompt_lengths)
  return host, device


def test_greedy_and_sampled_match_the_host_loop(model_and_params):
  model, params = model_and_params
  greedy, _ = _both(model, params, max_new_tokens=6)
  assert greedy.tokens.shape == (2, 6)
  # Sampled: batch 1 and 4 tokens, as test_generate's streaming test (shared programs).
  sampled, _ = _both(model, params, PROMPTS[:1], max_new_tokens=4, seed=3, **SAMPLED)
  assert not np.array_equal(sampled.tokens[0], greedy.tokens[0, :4])  # it did sample
  # Another seed gives other tokens, in both loops alike.
  other, _ = _both(model, params, PROMPTS[:1], max_new_tokens=4, seed=4, **SAMPLED)
  assert not np.array_equal(other.tokens, sampled.tokens)


def test_eos_early_stop_and_finish_reasons_match(model_and_params):
  model, params = model_and_params
  greedy = m1jax.generate(model, params, PROMPTS, max_new_tokens=5, prefill_segment_len=SEG)
  # An EOS that row 1 emits third and row 0 never: one row ends by EOS, the other by length.
  eos = int(greedy.tokens[1, 2])
  host, device = _both(model, params, max_new_tokens=5, eos_ids=[eos], pad_id=0)
  assert host.lengths[1] == 3 and np.all(device.tokens[1, 3:] == 0)
  assert np.all(device.log_probs[1, 3:] == 0)
  reasons = finish_reasons(device, eos, 5)
  np.testing.assert_array_equal(reasons, finish_reasons(host, eos, 5))
  np.testing.assert_array_equal(reasons, [FINISH_LENGTH, FINISH_EOS])
  # Every row ends by EOS (each row's own first greedy token is an EOS): one step, in both.
  first = sorted({int(t) for t in greedy.tokens[:, 0]})
  host, device = _both(model, params, max_new_tokens=5, eos_ids=first)
  assert device.tokens.shape == (2, 1)
  # M1 early stop (probability bar 0: every token is confident) ends all rows at step 2.
  host, device = _both(model, params, max_new_tokens=5, early_stop_tokens=2,
                       early_stop_prob=0.0)
  assert device.tokens.shape == (2, 2)
  np.testing.assert_array_equal(finish_reasons(device, None, 5), [FINISH_EARLY_STOP] * 2)


def test_decode_loop_choice_is_checked(model_and_params):
  model, params = model_and_params
  with pytest.raises(ValueError, match="decode_loop must be one of"):
    m1jax.generate(model, params, PROMPTS, max_new_tokens=2, decode_loop="gpu")
  with pytest.raises(ValueError, match="stream needs decode_loop='host'"):
    m1jax.generate(model, params, PROMPTS, max_new_tokens=2, decode_loop="device",
                   stream=lambda tokens, emitted: None)
