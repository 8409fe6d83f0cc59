"""scripts/gpu_bench.sh parses (bash -n) and the GPU sweep runs end to end on CPU."""
import json
import subprocess
import sys


def test_gpu_bench_script_parses():
  subprocess.run(["bash", "-n", "scripts/gpu_bench.sh"], check=True)


def test_sweep_dry_run_in_interpret_mode(tmp_path):
  out = tmp_path / "sweep.json"
  subprocess.run([sys.executable, "-m", "experiments.sweep_lightning_gpu", "--interpret",
                  "--shape=1,32,1,64", "--repeats=1", "--max_configs=1", f"--out={out}"],
                 check=True, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  result = json.loads(out.read_text())
  assert result["best"] is not None and result["best"]["fwd_bwd_s"] > 0


def test_bench_keep_going_records_a_failing_point_and_goes_on(tmp_path):
  """stage 2 runs with --keep_going: a contender that fails (here pallas_triton given a chunk
  that is not a power of two) is recorded with its error, and the others are still timed."""
  out = tmp_path / "bench.json"
  subprocess.run([sys.executable, "-m", "experiments.bench_linear_attention",
                  "--impls=chunked,pallas_triton", "--impl_block_sizes=pallas_triton:48",
                  "--keep_going", "--seq_lens=32", "--heads=1", "--head_dim=64", "--batch=1",
                  "--repeats=1", "--modes=fwd", f"--out={out}"],
                 check=True, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  result = json.loads(out.read_text())
  by_impl = {p["impl"]: p for p in result["results"]}
  assert result["complete"]
  assert by_impl["chunked"]["median_s"] > 0
  assert by_impl["pallas_triton"]["skipped"].startswith("error: ValueError")
