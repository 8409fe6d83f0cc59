"""Export an m1jax checkpoint (a trainer workdir or a converted one) to an HF directory.

  python -m experiments.export_hf --checkpoint_dir=runs/small --out=/tmp/small-hf --dialect=minimax
  python -m experiments.export_hf --checkpoint_dir=/ckpt/m1 --step=500 --out=DIR --dtype=bfloat16

Restores the params only (never the Adam moments), one layer slice at a time, and writes
the safetensors shards as it goes; the directory appears whole at the end. --dialect picks
the config.json keys: "minimax_m1" / "minimax_text_01" (MiniMax's remote code) or "minimax"
(transformers' MiniMaxForCausalLM.from_pretrained loads it).
"""
import os
import sys

from absl import app, flags, logging

_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint_dir", None, "An experiments.train workdir "
                                      "or an experiments.convert_hf output.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Trainer checkpoint step (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Output HF directory.", required=True)
_DIALECT = flags.DEFINE_string("dialect", None, "minimax_m1, minimax_text_01 or minimax "
                               "(default: a converted checkpoint's own, else minimax_m1).")
_DTYPE = flags.DEFINE_string("dtype", None, "Weight dtype: float32, bfloat16, float16 "
                             "(default: the checkpoint's param_dtype; routers stay float32).")
_MAX_SHARD = flags.DEFINE_string("max_shard_size", "5GB", "Bytes per safetensors shard.")
_TOKENIZER_DIR = flags.DEFINE_string("tokenizer_dir", None, "Tokenizer files to copy.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  from m1jax.hf.export import export_to_hf
  from m1jax.hf import CheckpointError
  try:
    out = export_to_hf(_CHECKPOINT_DIR.value, _OUT.value, step=_STEP.value,
                       dialect=_DIALECT.value, dtype=_DTYPE.value,
                       max_shard_size=_MAX_SHARD.value, tokenizer_dir=_TOKENIZER_DIR.value,
                       overwrite=_OVERWRITE.value)
  except (CheckpointError, ValueError, FileExistsError, FileNotFoundError) as e:
    # Bad input, named in the message: no traceback needed.
    sys.exit(f"error: {e}")
  print(f"exported: {os.path.abspath(out)}")


if __name__ == "__main__":
  app.run(main)
