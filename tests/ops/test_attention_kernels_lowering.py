"""attention_impl "splash" and "cudnn" compile for the hardware they target, from this CPU.

splash: an ahead-of-time Mosaic compile for a v5p:2x2x1 topology (libtpu, no TPU attached),
forward and backward, under jax.set_mesh with batch over `data` and heads over `tensor`
(the kernel runs inside jax.shard_map). "auto" picks splash there, because the platform is
the mesh's, not jax.default_backend() (cpu here).
cudnn: lowered for CUDA (no GPU and no CUDA libraries here, so jax's trace-time "is cuDNN
installed" probe is answered for it; the lowering itself is jax's own).
"""
import os

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from m1jax.ops import attention_impl  # noqa: E402

B, T, H, K, D = 2, 1024, 8, 2, 128
RULES = [("batch", "data"), ("heads", "tensor"), ("kv_heads", "tensor")]


def _args():
  q = jax.ShapeDtypeStruct((B, T, H, D), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((B, T, K, D), jnp.bfloat16)
  ints = jax.ShapeDtypeStruct((B, T), jnp.int32)
  return q, kv, kv, ints, ints, ints


def _fwd_bwd(impl):
  def loss(q, k, v, pos, kpos, seg):
    o = attention_impl.attend(impl, q, k, v, pos, kpos, seg, padded=True)
    return jnp.sum(o.astype(jnp.float32) ** 2)
  return jax.grad(loss, argnums=(0, 1, 2))


@pytest.mark.parametrize("impl", ["splash", "auto"])
def test_splash_compiles_for_v5p_forward_and_backward(impl):
  from jax.experimental import topologies
  topo = topologies.get_topology_desc(platform="tpu", topology_name="v5p:2x2x1")
  mesh = Mesh(np.asarray(topo.devices).reshape(2, 2), ("data", "tensor"))
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    fwd = jax.jit(lambda *a: attention_impl.attend(impl, *a, padded=True))
    fwd_text = fwd.lower(*_args()).compile().as_text()
    bwd_text = jax.jit(_fwd_bwd(impl)).lower(*_args()).compile().as_text()
  assert fwd_text.count("tpu_custom_call") >= 1
  # The backward recomputes through the kernel's own dq/dkv kernels.
  assert bwd_text.count("tpu_custom_call") >= 2


def test_cudnn_lowers_for_cuda(monkeypatch):
  from jax._src.cudnn import fused_attention_stablehlo as fa
  monkeypatch.setattr(fa, "check_cudnn_version", lambda: 91000)
  monkeypatch.setattr(fa, "check_compute_capability", lambda capability: True)
  monkeypatch.setattr(fa, "is_cuda_compute_capability_equal", lambda capability: False)
  monkeypatch.setattr(attention_impl, "lowering_platform", lambda: "gpu")
  fwd = jax.jit(lambda *a: attention_impl.attend("cudnn", *a, padded=True))
  fwd_text = fwd.trace(*_args()).lower(lowering_platforms=("cuda",)).as_text()
  bwd_text = jax.jit(_fwd_bwd("cudnn")).trace(*_args()).lower(
      lowering_platforms=("cuda",)).as_text()
  assert "__cudnn$fmha" in fwd_text
  assert bwd_text.count("__cudnn$fmha") >= 2  # forward + backward custom calls
  # Plain causal rows need no mask: cuDNN's own causal flag, no bias operand.
  plain = jax.jit(lambda q, k, v, pos: attention_impl.attend("cudnn", q, k, v, pos, pos))
  plain_text = plain.trace(*_args()[:4]).lower(lowering_platforms=("cuda",)).as_text()
  assert "__cudnn$fmhaSoftmax" in plain_text
