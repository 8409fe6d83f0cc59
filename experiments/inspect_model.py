"""Prints a config's parameter counts without allocating it; optionally runs a forward pass.

  python -m experiments.inspect_model --config=configs/minimax_m1_456b.py
  python -m experiments.inspect_model --config=configs/tiny.py --forward

The last line printed is a JSON object with at least total_params and active_params.
"""
import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

from m1jax.config import ModelConfig
from m1jax.param_count import count_params

# The default is the released model, so a bare `python -m experiments.inspect_model` works.
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "..", "configs", "minimax_m1_456b.py"),
    "ml_collections config file.")
_FORWARD = flags.DEFINE_bool("forward", False, "Also run a real forward pass on random tokens.")
_BATCH = flags.DEFINE_integer("batch", 2, "Batch size of the --forward pass.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 64, "Sequence length of the --forward pass.")


def _human(n: float) -> str:
  for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if abs(n) >= scale:
      return f"{n / scale:.3f}{unit}"
  return str(n)


def _forward(config: ModelConfig, batch: int, seq_len: int) -> dict:
  import jax  # heavy imports only when asked
  from m1jax.model import MiniMaxM1ForCausalLM, init_params
  model = MiniMaxM1ForCausalLM(config)
  params = init_params(model, jax.random.key(0))
  ids = jax.random.randint(jax.random.key(1), (batch, seq_len), 0, config.vocab_size)
  start = time.perf_counter()
  out = jax.jit(model.apply)({"params": params}, ids)
  logits = jax.block_until_ready(out.logits)
  return {"logits_shape": list(logits.shape), "logits_finite": bool(jax.numpy.isfinite(
      logits).all()), "aux_loss": float(out.aux_loss),
          "first_call_seconds": round(time.perf_counter() - start, 3)}


def main(argv):
  del argv
  config = ModelConfig.from_dict(_CONFIG.value.model.to_dict())
  report = count_params(config)
  print(f"layers: {config.num_hidden_layers} (period {config.layer_period}, "
        f"{'scanned' if config.is_scanned else 'unrolled'}), "
        f"{config.attn_type_list.count(0)} lightning + {config.attn_type_list.count(1)} softmax")
  print(f"{'component':<22}{'params':>18}{'bf16 bytes':>20}")
  for name, n in report["components"].items():
    print(f"{name:<22}{n:>18,}{report['bytes_bf16'][name]:>20,}")
  print(f"{'total':<22}{report['total_params']:>18,}{2 * report['total_params']:>20,}"
        f"   ({_human(report['total_params'])})")
  print(f"{'active per token':<22}{report['active_params']:>18,}"
        f"{'':>20}   ({_human(report['active_params'])}; excludes embedding and lm_head)")
  if _FORWARD.value:
    report["forward"] = _forward(config, _BATCH.value, _SEQ_LEN.value)
    print(f"forward: {report['forward']}")
  print(json.dumps(report))


if __name__ == "__main__":
  app.run(main)
