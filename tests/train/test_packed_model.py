"""segment_ids_BT through the model: a packed row gives each document's own logits."""
import jax
import jax.numpy as jnp
import numpy as np

from m1jax import MiniMaxM1ForCausalLM, init_params
from tests.assertions import assert_close
from tests.helpers import tiny_config


def _config():
  # Short blocks (many block boundaries inside each document) and a small RoPE base (so a
  # position that failed to restart at a document boundary changes the logits).
  return tiny_config((0, 1, 0, 1), block_size=4, rope_theta=100.0)


def test_packed_row_matches_documents_run_alone():
  config = _config()
  model = MiniMaxM1ForCausalLM(config)
  params = init_params(model, jax.random.key(0))
  rng = np.random.default_rng(0)
  lengths = [5, 7, 3]
  docs = [rng.integers(1, config.vocab_size, n) for n in lengths]
  pad = 2
  ids = np.concatenate(docs + [np.zeros(pad, np.int64)])[None].astype(np.int32)
  seg = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)]
                       + [np.zeros(pad)])[None].astype(np.int32)
  pos = np.concatenate([np.arange(n) for n in lengths] + [np.arange(pad)])[None].astype(np.int32)
  apply = jax.jit(model.apply)  # eager apply dispatches op by op: minutes on CPU
  packed = apply({"params": params}, jnp.asarray(ids), jnp.asarray(pos),
                 segment_ids_BT=jnp.asarray(seg)).logits
  start = 0
  for i, doc in enumerate(docs):
    alone = apply({"params": params}, jnp.asarray(doc[None], jnp.int32)).logits
    assert_close(packed[:, start:start + len(doc)], alone, name=f"doc{i}")
    start += len(doc)


def test_padding_is_left_out_of_router_stats():
  config = _config()
  model = MiniMaxM1ForCausalLM(config)
  params = init_params(model, jax.random.key(1))
  ids = jnp.ones((1, 10), jnp.int32)
  seg = jnp.asarray([[1] * 6 + [0] * 4], jnp.int32)
  out = jax.jit(model.apply)({"params": params}, ids, segment_ids_BT=seg)
  np.testing.assert_array_equal(np.asarray(out.router_stats.tokens), np.full((4,), 6.0))
