"""Task accuracy by greedy generation (m1jax.generate) against teacher forcing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax import MiniMaxM1ForCausalLM, ModelConfig, init_params
from m1jax.inference.generate import generate
from m1jax.train.data import ByteTokenizer
from m1jax.train.data.pipeline import encode_document
from m1jax.train.data.sources import data_task
from m1jax.train.evaluate import task_accuracy
from m1jax.train.step import predict_step
from tests.train.helpers import micro_config


@pytest.fixture(scope="module")
def setup():
  config = micro_config()
  config.train.eval_examples = 6
  model = MiniMaxM1ForCausalLM(ModelConfig.from_dict(config.model.to_dict()))
  # Large random weights give confident, input-dependent argmaxes (not one repeated token).
  params = jax.tree.map(lambda x: x * 20.0 if x.ndim > 1 else x,
                        init_params(model, jax.random.key(3)))
  return config, model, params


def test_generation_follows_teacher_forcing_up_to_the_first_miss(setup):
  """Greedy decoding must pick the teacher-forced argmax at every step until the first
  position where that argmax misses the reference: the two evaluation modes then agree."""
  config, model, params = setup
  tok = ByteTokenizer()
  task = data_task(config.data)
  seq_len = config.train.seq_len
  for i in range(4):
    ex = task.example(0, i, split=1)
    row = encode_document({"prompt": ex.prompt, "completion": ex.completion}, tok, seq_len)
    prompt = row["tokens"][row["loss_mask"] == 0]
    target = row["tokens"][row["loss_mask"] == 1]
    padded = np.full((1, seq_len), tok.pad_id, np.int32)
    padded[0, :len(row["tokens"])] = row["tokens"]
    teacher = np.asarray(predict_step(params, jnp.asarray(padded), model=model))[0]
    teacher = teacher[np.nonzero(row["loss_mask"])[0] - 1]
    out = generate(model, params, [prompt], max_new_tokens=len(target), eos_ids=(tok.eos_id,),
                   pad_id=tok.pad_id)
    generated = out.tokens[0, :out.lengths[0]]
    misses = np.nonzero(teacher != target)[0]
    upto = (misses[0] if len(misses) else len(target) - 1) + 1
    np.testing.assert_array_equal(generated[:upto], teacher[:upto])


def test_both_accuracy_modes_run_and_unknown_mode_is_an_error(setup):
  config, model, params = setup
  results = {}
  for mode in ("generate", "teacher_forced"):
    config.train.eval_accuracy_mode = mode
    results[mode] = task_accuracy(params, model, config, ByteTokenizer())
    assert 0 <= results[mode]["accuracy"] <= 1
  # Exact match is the same number in both modes (greedy reproduces the reference iff every
  # teacher-forced argmax does).
  assert results["generate"]["accuracy"] == results["teacher_forced"]["accuracy"]
  config.train.eval_accuracy_mode = "beam"
  with pytest.raises(ValueError, match="eval_accuracy_mode"):
    task_accuracy(params, model, config, ByteTokenizer())
