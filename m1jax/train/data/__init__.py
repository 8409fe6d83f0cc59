"""Training data: synthetic tasks or user text, tokenized, packed with segment ids (grain)."""
from m1jax.train.data.pipeline import encode_document, packed_dataset, targets
from m1jax.train.data.sources import documents
from m1jax.train.data.tokenizer import ByteTokenizer, HFTokenizer, make_tokenizer

__all__ = ["ByteTokenizer", "HFTokenizer", "documents", "encode_document", "make_tokenizer",
           "packed_dataset", "targets"]
