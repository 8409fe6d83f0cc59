"""experiments/generate.py end to end: an HF directory with a tokenizer.json, one streamed
prompt and a batch of two."""
import os
import subprocess
import sys

import pytest

from tests.helpers import FULL, LINEAR, hf_model, require

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_generate_script_streams_and_batches(tmp_path):
  tokenizers = require("tokenizers")
  hf_model((LINEAR, LINEAR, LINEAR, FULL) * 2, block_size=16).save_pretrained(tmp_path)
  vocab = {f"w{i}": i for i in range(97)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.decoder = None
  tok.save(str(tmp_path / "tokenizer.json"))
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  base = [sys.executable, "-m", "experiments.generate", f"--hf_dir={tmp_path}",
          "--max_new_tokens=4"]
  one = subprocess.run(base + ["--prompt=w5 w17 w3"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-2000:]
  assert one.stdout.startswith("w5 w17 w3") and "w" in one.stdout[len("w5 w17 w3"):]
  (tmp_path / "prompts.txt").write_text("w1 w2\nw40 w41 w42 w43\n")
  two = subprocess.run(base + [f"--prompts_file={tmp_path / 'prompts.txt'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert two.returncode == 0, two.stderr[-2000:]
  assert two.stdout.count("=== prompt") == 2
