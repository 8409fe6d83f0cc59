"""Where one forward or forward+backward of bench_peer_cpu's model spends its time on CPU.

  python -m experiments.profile_peer_cpu --seq_len=1024 --mode=fwd_bwd
  taskset -c 0 python -m experiments.profile_peer_cpu --seq_len=4096 --mode=fwd

Runs the program twice (compile, warm-up), then once under jax.profiler.trace, reads the
trace back with jax.profiler.ProfileData and attributes each XLA:CPU op's time (summed over
the pool threads) to the module that emitted it, through the op_name metadata of the compiled
HLO: the MoE, the lightning layers' attention, the softmax layer's attention, and the rest
(embedding, norms, LM head, loss), each split into forward and backward (ops under
transpose(jvp(...)) are the backward). Prints that table and the most expensive ops with
their op_name. Times on a shared machine include preemption; compare shares, not seconds.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import collections  # noqa: E402
import glob  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from m1jax import cpu_malloc  # noqa: E402
from experiments import bench_peer_cpu  # noqa: E402  (also defines --block_size)
from experiments.bench_peer_cpu import _cross_entropy, model_config  # noqa: E402
from m1jax.model import MiniMaxM1ForCausalLM, init_params  # noqa: E402

_SEQ = flags.DEFINE_integer("seq_len", 1024, "T (B = 1).")
_MODE = flags.DEFINE_enum("mode", "fwd_bwd", ["fwd", "fwd_bwd"], "What to profile.")
_TOP = flags.DEFINE_integer("top", 25, "How many single ops to list.")


def _op_names(hlo_text: str) -> dict:
  """HLO instruction name -> its op_name metadata. Instructions without one (the bodies of
  fusions, while loops and conditionals, e.g. the ynn_fusions inside the blockwise attention
  loop) inherit the op_name of the instruction that calls their computation, so their time
  lands in the right layer instead of "?"."""
  names, computation_of, caller_of = {}, {}, {}
  computation = None
  for line in hlo_text.splitlines():
    header = re.match(r"(?:ENTRY )?%?([\w.\-]+) \(.*\{$", line)
    if header:
      computation = header.group(1)
      continue
    match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
    if not match:
      continue
    name = match.group(1)
    computation_of[name] = computation
    op_name = re.search(r'op_name="([^"]+)"', line)
    if op_name:
      names[name] = op_name.group(1)
    for callee in re.findall(r"(?:calls|body|condition|to_apply|branch_computations|"
                             r"true_computation|false_computation)=\{?([%\w.\-, ]+)\}?", line):
      for c in callee.split(","):
        caller_of.setdefault(c.strip().lstrip("%"), name)

  def resolve(name, depth=0):
    if name in names or depth > 32:
      return names.get(name)
    caller = caller_of.get(computation_of.get(name))
    return resolve(caller, depth + 1) if caller else None

  return {name: resolve(name) for name in computation_of if resolve(name)}


def _group(op_name: str, softmax_layers: set) -> tuple:
  layer = re.search(r"layers/layer_(\d+)/", op_name)
  if "block_sparse_moe" in op_name:
    module = "moe"
  elif "self_attn" in op_name:
    module = ("softmax_attention" if layer and int(layer.group(1)) in softmax_layers
              else "lightning_attention")
  else:
    module = "rest"
  return module, "bwd" if "transpose(" in op_name else "fwd"


def main(argv):
  del argv
  if bench_peer_cpu._MALLOC.value == "tuned":  # pylint: disable=protected-access
    cpu_malloc.reexec_with_settings()
  cfg = model_config(block_size=bench_peer_cpu._BLOCK.value)  # pylint: disable=protected-access
  model = MiniMaxM1ForCausalLM(cfg)
  params = init_params(model, jax.random.key(0))
  ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, _SEQ.value)),
                    jnp.int32)
  if _MODE.value == "fwd":
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x).logits)
  else:
    fn = jax.jit(jax.grad(lambda p, x: _cross_entropy(model.apply({"params": p}, x).logits,
                                                      x)))
  for _ in range(2):
    jax.block_until_ready(fn(params, ids))
  names = _op_names(fn.lower(params, ids).compile().as_text())
  softmax_layers = {i for i, t in enumerate(cfg.attn_type_list) if t == 1}
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      jax.block_until_ready(fn(params, ids))
    path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
    profile = jax.profiler.ProfileData.from_file(path)
  by_group, by_op = collections.Counter(), collections.Counter()
  for plane in profile.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):  # the XLA:CPU pool threads
        continue
      for event in line.events:
        if event.name.startswith("ThunkExecutor"):  # the enclosing executor spans
          continue
        op_name = names.get(event.name, "?")
        by_group[_group(op_name, softmax_layers)] += event.duration_ns
        by_op[(event.name, op_name)] += event.duration_ns
  total = sum(by_group.values())
  print(f"T={_SEQ.value} {_MODE.value}: {total / 1e9:.3f} s of op time, load "
        f"{os.getloadavg()[0]:.1f}, {len(os.sched_getaffinity(0))} core(s)")
  for (module, part), ns in by_group.most_common():
    print(f"  {module:20s} {part}  {ns / 1e6:9.1f} ms  {100 * ns / total:5.1f}%")
  print("top ops:")
  for (name, op_name), ns in by_op.most_common(_TOP.value):
    print(f"  {ns / 1e6:9.1f} ms  {name:32s} {op_name[-100:]}")


if __name__ == "__main__":
  app.run(main)
