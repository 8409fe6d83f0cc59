"""The grain pipeline: packing with segment ids, labels, determinism, resume, bad input."""
import json

import numpy as np
import pytest

from m1jax.train.data import ByteTokenizer, make_tokenizer, packed_dataset, targets
from tests.helpers import micro_train_config


def _batches(config, n, split=0, state=None):
  t = config.train
  it = iter(packed_dataset(config.data, ByteTokenizer(), seq_len=t.seq_len,
                           batch_size=t.batch_size, seed=t.seed, split=split))
  if state is not None:
    it.set_state(state)
  return [next(it) for _ in range(n)], it


def test_packed_rows_hold_whole_documents_with_segment_ids():
  config = micro_train_config()
  (batch,), _ = _batches(config, 1)
  tok = ByteTokenizer()
  for row in range(batch["tokens"].shape[0]):
    seg, pos, ids = batch["segment_ids"][row], batch["positions"][row], batch["tokens"][row]
    for s in set(seg[seg > 0].tolist()):
      where = np.nonzero(seg == s)[0]
      assert np.array_equal(where, np.arange(where[0], where[-1] + 1))  # contiguous
      assert np.array_equal(pos[where], np.arange(len(where)))          # positions restart
      doc = ids[where]
      assert doc[0] == tok.bos_id or tok.bos_id is None
      text = tok.decode(doc)
      prompt, completion = text.split(":", 1)
      assert completion.endswith(">=" + str(sum(map(int, prompt.split("+")))))
  labels = np.asarray(targets(batch))
  # No target crosses a document boundary or lands on padding or a prompt token.
  seg = batch["segment_ids"]
  assert np.all(labels[:, 1:][seg[:, 1:] != seg[:, :-1]] == -100)
  assert np.all(labels[seg == 0] == -100)
  assert np.all(labels[batch["loss_mask"] == 0] == -100)
  assert np.sum(labels != -100) > 0


def test_pipeline_is_deterministic_and_resumable():
  config = micro_train_config()
  first, _ = _batches(config, 5)
  again, _ = _batches(config, 5)
  for a, b in zip(first, again):
    assert all(np.array_equal(a[k], b[k]) for k in a)
  _, it = _batches(config, 2)
  state = json.loads(json.dumps(it.get_state()))  # it travels as JSON in checkpoints
  resumed, _ = _batches(config, 3, state=state)
  for a, b in zip(first[2:], resumed):
    assert all(np.array_equal(a[k], b[k]) for k in a)
  held_out, _ = _batches(config, 1, split=1)
  assert not np.array_equal(held_out[0]["tokens"], first[0]["tokens"])


def test_text_and_jsonl_sources(tmp_path):
  (tmp_path / "a.txt").write_text("first document\n\nsecond one\n\n" * 10)
  with open(tmp_path / "b.jsonl", "w") as f:
    for i in range(10):
      f.write(json.dumps({"text": f"record {i}"}) + "\n")
      f.write(json.dumps({"prompt": "Q", "completion": f"A{i}"}) + "\n")
  config = micro_train_config()
  config.data.source = "text"
  config.data.paths = f"{tmp_path}/*.txt,{tmp_path}/*.jsonl"
  (batch,), _ = _batches(config, 1)
  text = ByteTokenizer().decode(batch["tokens"].reshape(-1))
  assert "document" in text or "record" in text or "A" in text


def test_empty_dataset_is_an_error(tmp_path):
  (tmp_path / "empty.jsonl").write_text("\n\n")
  config = micro_train_config()
  config.data.source = "text"
  config.data.paths = str(tmp_path / "empty.jsonl")
  with pytest.raises(ValueError, match="empty training set"):
    _batches(config, 1)
  config.data.paths = str(tmp_path / "missing-*.txt")
  with pytest.raises(ValueError, match="matches no files"):
    _batches(config, 1)


def _word_level_tokenizer(path, words):
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>"] + words)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(path))


def test_hf_tokenizer_json(tmp_path):
  path = tmp_path / "tokenizer.json"
  _word_level_tokenizer(path, ["hello", "world"])
  config = micro_train_config()
  config.data.tokenizer, config.data.eos_token = str(path), "<eos>"
  tok = make_tokenizer(config.data, config.model.vocab_size)
  assert tok.encode("hello world").tolist() == [3, 4] and tok.eos_id == 1


def test_tokenizer_larger_than_model_vocab_is_an_error(tmp_path):
  path = tmp_path / "tokenizer.json"
  _word_level_tokenizer(path, [f"w{i}" for i in range(600)])
  config = micro_train_config()
  config.data.tokenizer = str(path)
  with pytest.raises(ValueError, match="603 tokens but model.vocab_size is 512"):
    make_tokenizer(config.data, config.model.vocab_size)
