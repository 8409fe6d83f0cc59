"""m1jax.generate: greedy parity with transformers, batching, stopping rules, bad input.

Every call here uses 5-token prefill segments and generate's default length bucket, so the
prompts are padded to whole segments and the capacity to 64: one prefill and one decode
program per batch size (2 and 1) serve the whole module, and test_cache.py's batch-2 and
batch-1 programs are the same ones (same config, capacity and segment length).
"""
import numpy as np
import pytest

import m1jax
from m1jax.model import MiniMaxM1ForCausalLM
from tests.helpers import FULL, LINEAR, hf_model, random_params, require, tiny_config

PROMPTS = [[5, 17, 3], [40, 2, 9, 88, 61, 7, 12, 30, 11, 70, 45]]
SEG = 5


@pytest.fixture(scope="module")
def model_and_params():
  cfg = tiny_config((0, 0, 0, 1) * 2)
  return MiniMaxM1ForCausalLM(cfg), random_params(cfg, 0)


def test_batch_of_different_lengths_gives_the_same_tokens_as_each_prompt_alone(
    model_and_params):
  model, params = model_and_params
  batch = m1jax.generate(model, params, PROMPTS, max_new_tokens=6, prefill_segment_len=SEG)
  np.testing.assert_array_equal(batch.lengths, [6, 6])
  np.testing.assert_array_equal(batch.prompt_lengths, [3, 11])
  for b, prompt in enumerate(PROMPTS):
    # In the batch (T = 15) row 0 is padded by 12, two whole segments and two tokens more;
    # alone by 2 (T = 5). Padding must not change a row's tokens.
    alone = m1jax.generate(model, params, [prompt], max_new_tokens=6, prefill_segment_len=SEG)
    np.testing.assert_array_equal(batch.tokens[b], alone.tokens[0])
    np.testing.assert_allclose(batch.log_probs[b], alone.log_probs[0], rtol=1e-5)
  # The same prompts as a right-padded array with lengths.
  ids = np.zeros((2, 11), np.int32)
  for b, p in enumerate(PROMPTS):
    ids[b, :len(p)] = p
  padded = m1jax.generate(model, params, ids, prompt_lengths=[3, 11], max_new_tokens=6,
                          prefill_segment_len=SEG)
  np.testing.assert_array_equal(padded.tokens, batch.tokens)


def test_eos_early_stop_seed_and_streaming(model_and_params):
  model, params = model_and_params
  greedy = m1jax.generate(model, params, PROMPTS, max_new_tokens=5, prefill_segment_len=SEG)
  eos = int(greedy.tokens[1, 2])
  out = m1jax.generate(model, params, PROMPTS, max_new_tokens=5, eos_ids=[eos], pad_id=0,
                       prefill_segment_len=SEG)
  assert out.lengths[1] == 3 and np.all(out.tokens[1, 3:] == 0)
  assert np.all(out.log_probs[1, 3:] == 0)
  # M1 early stop, with the probability bar at 0 so every token counts as confident.
  stopped = m1jax.generate(model, params, PROMPTS, max_new_tokens=5, early_stop_tokens=2,
                           early_stop_prob=0.0, prefill_segment_len=SEG)
  np.testing.assert_array_equal(stopped.lengths, [2, 2])
  assert stopped.tokens.shape[1] == 2  # every row done: the loop stops early
  streamed = []
  kw = dict(max_new_tokens=4, temperature=1.0, top_k=20, top_p=0.9, prefill_segment_len=SEG)
  a = m1jax.generate(model, params, PROMPTS[:1], seed=3, stream=lambda t, e: streamed.append(t),
                     **kw)
  b = m1jax.generate(model, params, PROMPTS[:1], seed=3, **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(np.stack(streamed, axis=1), a.tokens)
  assert np.all(a.log_probs < 0)


@pytest.mark.parametrize("kw, match", [
    (dict(input_ids=[[1, 2, 3]], max_new_tokens=8, max_len=10), "exceeds the cache capacity"),
    (dict(input_ids=[[1, 2], []], max_new_tokens=2), "prompt 1 is empty"),
    (dict(input_ids=[[1, 97]], max_new_tokens=2), "outside"),
    (dict(input_ids=[[1, -1]], max_new_tokens=2), "outside"),
    (dict(input_ids=[[1, 2]], max_new_tokens=2, top_p=0.0), "top_p"),
    (dict(input_ids=[[1, 2]], max_new_tokens=2, top_p=1.01), "top_p"),
    (dict(input_ids=[[1, 2]], max_new_tokens=2, temperature=-1.0), "temperature"),
    (dict(input_ids=[[1, 2]], max_new_tokens=0), "max_new_tokens"),
], ids=["capacity", "empty", "id>=vocab", "negative-id", "top_p=0", "top_p>1",
        "negative-temperature", "no-new-tokens"])
def test_bad_input_raises_a_clear_error(model_and_params, kw, match):
  model, params = model_and_params
  with pytest.raises(ValueError, match=match):
    m1jax.generate(model, params, **kw)


@pytest.mark.slow
def test_greedy_tokens_match_transformers_generate(tmp_path):
  torch = require("torch")
  # Scanned (period 4, two groups), GQA 2:1, full rotary (transformers' only kind).
  hf = hf_model((LINEAR, LINEAR, LINEAR, FULL) * 2, block_size=16)
  hf.save_pretrained(tmp_path)
  model, params = m1jax.from_pretrained(tmp_path)
  prompts = [[5, 17, 3, 60, 22], [40, 2, 9, 88, 61, 7, 12, 30, 31, 50, 8, 90, 14, 33, 65, 19,
                                  23, 4]]
  ours = m1jax.generate(model, params, prompts, max_new_tokens=12, eos_ids=[2],
                        prefill_segment_len=8)
  for b, prompt in enumerate(prompts):
    with torch.no_grad():
      ref = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                        eos_token_id=2, pad_token_id=0)
    ref_new = ref[0, len(prompt):].numpy()
    n = int(ours.lengths[b])
    np.testing.assert_array_equal(ours.tokens[b, :n], ref_new[:n])
    assert n == len(ref_new) or ref_new[n - 1] == 2
