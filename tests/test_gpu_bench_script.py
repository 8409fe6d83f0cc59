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
