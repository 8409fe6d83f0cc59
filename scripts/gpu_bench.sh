#!/usr/bin/env bash
# GPU machine only (no network there). bash scripts/gpu_bench.sh stage1 | stage2 ["<bench flags>"]
# The wheels the GPU image lacks come along in the ignored .whl/ folder, fetched on a
# networked host with:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl flash-linear-attention==0.6.0 fla-core==0.6.0 jax-linear-attention==0.1.0 equinox==0.13.8
set -uo pipefail
# torch (fla) shares the GPU: JAX must not grab 75 % of its memory up front.
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false
SCRATCH=${TMPDIR:-$PWD/.scratch}; OUT=${OUT:-$SCRATCH/out}; mkdir -p "$SCRATCH" "$OUT"
export TRITON_CACHE_DIR=$SCRATCH/triton-cache
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SCRATCH/site" .whl/*.whl || exit 1
fi
export PYTHONPATH=$SCRATCH/site:$PWD
case "${1:-}" in
stage1)  # <= ~9.8 min: environment, compiled numerics, config sweep, fla warm-up
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import jax,torch,triton,fla,jla;print(jax.__version__,jax.devices(),torch.__version__,triton.__version__,fla.__version__)"
  } > "$OUT/env.txt" 2>&1
  timeout 200 python3 -m pytest -q -x -n 4 -p no:cacheprovider \
    tests/pallas_kernels/test_lightning_triton.py tests/pallas_kernels/test_lightning_segments.py \
    -k "triton" > "$OUT/tests.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/tests.log"
  timeout 230 python3 -m experiments.sweep_lightning_gpu --shape=4,8192,16,128 --repeats=10 \
    --out="$OUT/sweep.json" > "$OUT/sweep.log" 2>&1
  timeout 130 python3 -c "import torch; from fla.ops.simple_gla import chunk_simple_gla as f
q,k,v=(torch.randn(1,1024,4,128,device='cuda',dtype=torch.bfloat16,requires_grad=True) for _ in range(3))
o,s=f(q,k,v,g_gamma=-torch.rand(4,device='cuda'),scale=1.0,output_final_state=True)
(o.float().sum()+s.sum()).backward(); torch.cuda.synchronize(); print('fla warm')" >> "$OUT/sweep.log" 2>&1 ;;
stage2)  # ~9 min: B=4, H in {16,64}, D=128, T in {8K,16K,32K}, bf16, fwd and fwd+bwd
  timeout 560 python3 -m experiments.bench_linear_attention \
    --impls=pallas_triton,jla,fla,cudnn,pallas_gpu --impl_block_sizes=pallas_gpu:64 --keep_going \
    --modes=fwd,fwd_bwd --dtype=bfloat16 --batch=4 \
    --heads_sweep=16,64 --head_dim=128 --seq_lens=8192,16384,32768 --repeats=10 ${2:-} \
    --out="$OUT/linear_attention_gpu.json" > "$OUT/bench.log" 2>&1 ;;
*) echo "usage: $0 stage1|stage2 '<bench flags>'"; exit 2 ;;
esac
