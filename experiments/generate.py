"""Generates text from prompts with m1jax.generate.

  python -m experiments.generate --hf_dir=/path/to/MiniMax-M1 --prompt="Hello" --max_new_tokens=64
  python -m experiments.generate --hf_dir=DIR --prompts_file=prompts.txt --temperature=1 --top_p=0.95
  python -m experiments.generate --checkpoint_dir=runs/tiny --prompt="12+34="  # trained m1jax
  python -m experiments.generate --checkpoint_dir=/path/to/converted --prompt="Hello"  # convert_hf
  python -m experiments.generate --config=configs/tiny.py --prompt="abc"   # random weights, bytes

--hf_dir loads weights with m1jax.from_pretrained and the tokenizer from DIR/tokenizer.json
(the `tokenizers` package). --checkpoint_dir loads the latest (or --step) Orbax checkpoint of
an `experiments.train` workdir with the tokenizer its config names, or a converted checkpoint
(`experiments.convert_hf`) with the tokenizer.json copied from its source. --config builds a randomly initialised model with a byte tokenizer
(token = UTF-8 byte), for smoke runs. One prompt streams its tokens as they come; several
prompts are decoded as one left-padded batch and printed at the end.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_HF_DIR = flags.DEFINE_string("hf_dir", None, "HF checkpoint directory (config.json, "
                              "safetensors, tokenizer.json).")
_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint_dir", None, "An experiments.train workdir "
                                      "(its checkpoint and tokenizer) or an "
                                      "experiments.convert_hf output.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step for --checkpoint_dir "
                             "(default: the latest).")
_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config: random "
                                          "weights and a byte tokenizer (smoke runs).")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt; repeat the flag for a batch.")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "A file with one prompt per line.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "0 = off.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass in (0, 1].")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_EARLY_STOP = flags.DEFINE_integer("early_stop_tokens", None, "M1 early stop: N consecutive "
                                   "tokens with p > 0.99 end a row (report: 3000).")
_SEGMENT = flags.DEFINE_integer("prefill_segment_len", 2048, "Prefill segment length.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Override compute dtype.")


class TrainTokenizer:
  """The trainer's tokenizers (m1jax.train.data) with the eos_ids tuple generate takes."""

  def __init__(self, tok):
    self._tok = tok
    self.eos_ids = () if tok.eos_id is None else (tok.eos_id,)

  def encode(self, text):
    bos = [] if self._tok.bos_id is None else [self._tok.bos_id]
    return bos + [int(i) for i in self._tok.encode(text)]

  def decode(self, ids):
    return self._tok.decode(ids)


class HFTokenizer:
  def __init__(self, path, config_json):
    import json
    from tokenizers import Tokenizer
    self._tok = Tokenizer.from_file(path)
    with open(config_json) as f:
      eos = json.load(f).get("eos_token_id")
    self.eos_ids = tuple(eos if isinstance(eos, list) else [] if eos is None else [eos])

  def encode(self, text):
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids):
    return self._tok.decode(list(ids))


def _load():
  import jax
  import m1jax
  overrides = {} if _DTYPE.value is None else {"dtype": _DTYPE.value}
  if _HF_DIR.value:
    tok_path = os.path.join(_HF_DIR.value, "tokenizer.json")
    if not os.path.exists(tok_path):
      raise app.UsageError(f"--hf_dir: no tokenizer.json in {_HF_DIR.value}")
    model, params = m1jax.from_pretrained(_HF_DIR.value, **overrides)
    return model, params, HFTokenizer(tok_path, os.path.join(_HF_DIR.value, "config.json"))
  from m1jax.train.data import ByteTokenizer, make_tokenizer
  if _CHECKPOINT_DIR.value:
    from m1jax.hf.converted import is_converted_checkpoint
    if is_converted_checkpoint(_CHECKPOINT_DIR.value):
      return _load_converted(_CHECKPOINT_DIR.value, overrides)
    from m1jax.train.checkpointing import restore_trained_params
    config, model, params = restore_trained_params(_CHECKPOINT_DIR.value, _STEP.value)
    if overrides:
      model = m1jax.MiniMaxM1ForCausalLM(model.config.replace(**overrides))
    tok = make_tokenizer(config.data, model.config.vocab_size)
    return model, params, TrainTokenizer(tok)
  if _CONFIG.value is None:
    raise app.UsageError("pass --hf_dir, --checkpoint_dir or --config")
  cfg = m1jax.ModelConfig.from_dict({**_CONFIG.value.model.to_dict(), **overrides})
  model = m1jax.MiniMaxM1ForCausalLM(cfg)
  return (model, m1jax.init_params(model, jax.random.key(_SEED.value)),
          TrainTokenizer(ByteTokenizer()))


def _load_converted(path, overrides):
  """A converted HF checkpoint (experiments.convert_hf): its params and the tokenizer.json
  copied from its source."""
  import m1jax
  from m1jax.hf.converted import load_converted, read_manifest
  if _STEP.value is not None:
    raise app.UsageError(f"--step: {path} is a converted checkpoint, which has no steps")
  tok_path = os.path.join(path, "tokenizer.json")
  if not os.path.exists(tok_path):
    raise app.UsageError(f"--checkpoint_dir: the converted checkpoint {path} has no "
                         "tokenizer.json (its HF source had none); copy one in")
  config = m1jax.ModelConfig.from_dict(read_manifest(path)["model"]).replace(**overrides)
  config, params = load_converted(path, config)
  return (m1jax.MiniMaxM1ForCausalLM(config), params,
          HFTokenizer(tok_path, os.path.join(path, "config.json")))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore step at INFO
  import m1jax
  prompts = list(_PROMPT.value)
  if _PROMPTS_FILE.value:
    with open(_PROMPTS_FILE.value) as f:
      prompts += [line.rstrip("\n") for line in f if line.strip()]
  if not prompts:
    raise app.UsageError("pass --prompt (repeatable) or --prompts_file")
  model, params, tok = _load()
  ids = [tok.encode(p) for p in prompts]
  stream = None
  if len(prompts) == 1:
    sys.stdout.write(prompts[0])
    emitted, shown = [], ""

    def stream(tokens_B, live_B):
      nonlocal shown
      if live_B[0]:
        emitted.append(int(tokens_B[0]))
        text = tok.decode(emitted)
        sys.stdout.write(text[len(shown):])
        sys.stdout.flush()
        shown = text

  out = m1jax.generate(model, params, ids, max_new_tokens=_MAX_NEW.value,
                       temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
                       seed=_SEED.value, eos_ids=tok.eos_ids, prefill_segment_len=_SEGMENT.value,
                       early_stop_tokens=_EARLY_STOP.value, stream=stream)
  if stream is not None:
    sys.stdout.write("\n")
    return
  for b, prompt in enumerate(prompts):
    text = tok.decode(out.tokens[b, :out.lengths[b]].tolist())
    print(f"=== prompt {b} ({out.prompt_lengths[b]} tokens -> {out.lengths[b]} new) ===")
    print(prompt + text)


if __name__ == "__main__":
  app.run(main)
