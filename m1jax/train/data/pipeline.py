"""Tokenize documents, pack them into rows with segment ids, batch; all through grain.

A packed batch is a dict of int32 [B,T] arrays:
  tokens        token ids (padding = the tokenizer's pad id)
  segment_ids   1, 2, ... per document within a row; 0 = padding
  positions     position within the document (RoPE restarts per document)
  loss_mask     1 where the token is a training target (completion tokens and EOS)
Attention never crosses a document (the model's segment_ids_BT). The iterator's state
(`get_state`/`set_state`, plain JSON) goes into every checkpoint, so resume is exact.
"""
import grain
import jax
import jax.numpy as jnp
import numpy as np

from m1jax.losses import IGNORE_INDEX

from m1jax.train.data.sources import documents

# FirstFit packing keeps this many partially filled rows open; more packs tighter.
_PACKING_BINS = 8


def encode_document(doc: dict, tokenizer, seq_len: int) -> dict:
  """[BOS] prompt completion [EOS] -> tokens and loss_mask (1 on completion and EOS)."""
  bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
  eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
  prompt = np.concatenate([np.asarray(bos, np.int32), tokenizer.encode(doc["prompt"])])
  completion = np.concatenate([tokenizer.encode(doc["completion"]), np.asarray(eos, np.int32)])
  tokens = np.concatenate([prompt, completion]).astype(np.int32)[:seq_len]
  loss_mask = np.concatenate([np.zeros(len(prompt), np.int32),
                              np.ones(len(completion), np.int32)])[:seq_len]
  return {"tokens": tokens, "loss_mask": loss_mask}


def packed_dataset(data_config, tokenizer, *, seq_len: int, batch_size: int, seed: int,
                   split: int, num_slices: int = 1, slices=None) -> grain.IterDataset:
  """The infinite, deterministic stream of packed [batch_size, seq_len] batches.

  Many hosts: the stream is `num_slices` independent slices (slice s holds documents
  s, s + num_slices, ..., grain's shard options), each packed into batch_size / num_slices
  rows; a global batch is the slices' rows in slice order. `slices` (default: all) are the
  ones this reader produces, so each process reads and packs only its own documents and
  yields its rows of the global batch. The global stream depends on num_slices, never on
  how many processes read it.
  """
  if batch_size % num_slices:
    raise ValueError(f"batch_size={batch_size} is not divisible by num_slices={num_slices}")
  slices = list(range(num_slices)) if slices is None else list(slices)
  docs = documents(data_config, seed, split)
  parts = [_packed_slice(docs, tokenizer, seq_len, batch_size // num_slices, s, num_slices)
           for s in slices]
  if len(parts) == 1:
    return parts[0]
  # One iterator (one checkpointable state) over this reader's slices, rows concatenated.
  return grain.experimental.ZipIterDataset(parts).map(
      lambda batches: {k: np.concatenate([b[k] for b in batches]) for k in batches[0]})


def _packed_slice(docs, tokenizer, seq_len: int, rows: int, index: int, count: int):
  if count > 1:
    docs = docs.slice(slice(index, None, count))
  encoded = docs.map(lambda d: encode_document(d, tokenizer, seq_len))
  packed = grain.experimental.FirstFitPackIterDataset(
      encoded.to_iter_dataset(), length_struct={"tokens": seq_len, "loss_mask": seq_len},
      num_packing_bins=_PACKING_BINS, shuffle_bins=False)
  return packed.map(_rename).batch(rows, drop_remainder=True)


def _rename(row: dict) -> dict:
  return {"tokens": row["tokens"], "segment_ids": row["tokens_segment_ids"],
          "positions": row["tokens_positions"], "loss_mask": row["loss_mask"]}


def targets(batch: dict) -> jax.Array:
  """Labels for m1jax.losses.next_token_loss: token t is a target of t-1 only inside one
  document and where loss_mask is set; everything else is IGNORE_INDEX (-100)."""
  tokens, seg = batch["tokens"], batch["segment_ids"]
  same_doc = jnp.concatenate([jnp.zeros_like(seg[:, :1], bool), seg[:, 1:] == seg[:, :-1]], 1)
  valid = same_doc & (seg != 0) & (batch["loss_mask"] != 0)
  return jnp.where(valid, tokens, IGNORE_INDEX).astype(jnp.int32)
