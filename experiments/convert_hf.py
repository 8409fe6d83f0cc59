"""Convert an HF MiniMax checkpoint into an m1jax Orbax checkpoint, streaming.

  python -m experiments.convert_hf --hf_dir=/path/to/MiniMax-M1 --workdir=/ckpt/m1
  python -m experiments.train --config=configs/minimax_m1_456b.py --config.train.init_from=/ckpt/m1
  python -m experiments.generate --checkpoint_dir=/ckpt/m1 --prompt="Hello"

Reads config.json and every safetensors header first and refuses a checkpoint whose keys,
shapes or dtypes do not match (nothing is written then); converts one param group at a time
(peak memory about one layer's stacked experts, not the checkpoint); prints progress on
stderr; rerunning after an interruption resumes from the last committed group. The result
appears at --workdir only when complete. `--config.mesh=fsdp=4,expert=2` places each param
on that mesh (m1jax/sharding.py rules) before writing, so each process writes its shards.
"""
import os
import sys

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags

_HF_DIR = flags.DEFINE_string("hf_dir", None, "HF checkpoint directory (config.json, "
                              "safetensors).", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory of the converted "
                               "checkpoint.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --workdir (or an "
                               "unfinished conversion of another source).")


def _default_config():
  config = ml_collections.ConfigDict()
  # Mesh for sharded writes, "<axis>=<size>,..." over data/fsdp/expert/tensor/sequence (as
  # the trainer's config.mesh; one size may be -1); empty: numpy arrays written by this host.
  config.mesh = ""
  # Stored dtype of the weights ("float32", "bfloat16", "float16"); empty: the checkpoint's
  # declared dtype. Routers are always float32.
  config.param_dtype = ""
  return config


_CONFIG = config_flags.DEFINE_config_dict("config", _default_config())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every item at INFO
  from m1jax.hf.convert import convert_hf_to_orbax
  config = _CONFIG.value
  overrides = {"param_dtype": config.param_dtype} if config.param_dtype else {}
  shardings = None
  if config.mesh:
    from m1jax.hf.importing import read_hf_config
    from m1jax.hf.mesh import param_sharding_fn
    from m1jax.sharding import make_mesh
    shardings = param_sharding_fn(read_hf_config(_HF_DIR.value, **overrides),
                                  make_mesh(config.mesh))
  from m1jax.hf import CheckpointError
  try:
    out = convert_hf_to_orbax(_HF_DIR.value, _WORKDIR.value, overwrite=_OVERWRITE.value,
                              config_overrides=overrides, shardings=shardings)
  except (CheckpointError, ValueError, FileExistsError, FileNotFoundError) as e:
    # Bad input, named in the message: no traceback needed.
    sys.exit(f"error: {e}")
  print(f"converted: {os.path.abspath(out)}")


if __name__ == "__main__":
  app.run(main)
