"""Tokenizers for training data: bytes (the default, no files) or an HF tokenizer.json."""
import os

import numpy as np


class ByteTokenizer:
  """UTF-8 bytes shifted past three special ids (0 pad, 1 bos, 2 eos): vocab 259."""
  pad_id, bos_id, eos_id = 0, 1, 2
  _OFFSET = 3
  vocab_size = 256 + _OFFSET

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self._OFFSET

  def decode(self, ids) -> str:
    # Special ids and ids past the byte range (a model vocab may be larger) are skipped.
    data = bytes(int(i) - self._OFFSET for i in ids if self._OFFSET <= int(i) < self.vocab_size)
    return data.decode("utf-8", errors="replace")


class HFTokenizer:
  """An HF `tokenizers` tokenizer.json; bos/eos/pad are token strings from the config."""

  def __init__(self, path: str, bos_token: str = "", eos_token: str = "",
               pad_token: str = ""):
    from tokenizers import Tokenizer  # only needed for this tokenizer
    if not os.path.isfile(path):
      raise ValueError(f"data.tokenizer: no tokenizer.json at {path!r}")
    self._tok = Tokenizer.from_file(path)
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def special(token, what):
      if not token:
        return None
      token_id = self._tok.token_to_id(token)
      if token_id is None:
        raise ValueError(f"data.{what}={token!r} is not in the vocabulary of {path}")
      return token_id

    self.bos_id = special(bos_token, "bos_token")
    self.eos_id = special(eos_token, "eos_token")
    # Padding positions are masked out of loss and attention, so any id works.
    self.pad_id = special(pad_token, "pad_token") or 0

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in ids])


def make_tokenizer(data_config, vocab_size: int):
  """`data.tokenizer` is "byte" or a tokenizer.json path; checks it fits the model's vocab."""
  name = data_config.tokenizer
  if name == "byte":
    tok = ByteTokenizer()
  else:
    tok = HFTokenizer(name, data_config.get("bos_token", ""), data_config.get("eos_token", ""),
                      data_config.get("pad_token", ""))
  if tok.vocab_size > vocab_size:
    raise ValueError(f"data.tokenizer={name!r} has {tok.vocab_size} tokens but "
                     f"model.vocab_size is {vocab_size}; ids past the embedding would be "
                     "out of range. Use a smaller tokenizer or raise model.vocab_size.")
  return tok
