"""configs/*.py and m1jax.config_overrides: values, variants, runlocal, import cost, overrides.

Values are checked against literals written out here (not against configs/common.py, which
is also under test), so a default that moves cannot pass unnoticed.
"""
import dataclasses
import importlib
import os
import re
import subprocess
import sys

from absl import flags
import pytest

from configs import common
from m1jax import config_overrides
from m1jax.config import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("tiny", "small", "minimax_m1_456b")
RELEASE_PATTERN = [0, 0, 0, 0, 0, 0, 0, 1]


def get_config(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def model_of(config) -> ModelConfig:
  return ModelConfig.from_dict(config.model.to_dict())


# ----------------------------------------------------------------------------- values
# (config, dotted key, value) as the configs stood before configs/common.py existed.
KEY_VALUES = [
    ("tiny", "model.vocab_size", 512),
    ("tiny", "model.hidden_size", 64),
    ("tiny", "model.num_hidden_layers", 16),
    ("tiny", "model.layernorm_mlp_alpha", 2.378414230005442),
    ("tiny", "model.rope_theta", 10_000.0),
    ("tiny", "model.block_size", 32),
    ("tiny", "model.dtype", "float32"),
    ("tiny", "model.remat", False),
    ("tiny", "train.num_steps", 400),
    ("tiny", "train.eval_examples", 64),
    ("tiny", "optimizer.learning_rate", 3e-3),
    ("tiny", "data.task_options.arithmetic.max_digits", 2),
    ("small", "model.vocab_size", 32_768),
    ("small", "model.intermediate_size", 768),
    ("small", "model.max_position_embeddings", 1_048_576),
    ("small", "model.param_dtype", "float32"),
    ("small", "model.dtype", "bfloat16"),
    ("small", "model.remat_policy", "dots_with_no_batch_dims_saveable"),
    ("small", "train.seq_len", 2048),
    ("small", "train.peak_flops_per_device", 989e12),
    ("small", "optimizer.schedule", "cosine"),
    ("small", "data.task_options.arithmetic.max_digits", 6),
    ("minimax_m1_456b", "model.vocab_size", 200_064),
    ("minimax_m1_456b", "model.hidden_size", 6144),
    ("minimax_m1_456b", "model.num_local_experts", 32),
    ("minimax_m1_456b", "model.rotary_dim", 64),
    ("minimax_m1_456b", "model.rope_theta", 10_000_000.0),
    ("minimax_m1_456b", "model.layernorm_full_attention_alpha", 3.5565588200778455),
    # fp32 master weights (bf16 compute): bf16 weights lose most AdamW steps at LR 8e-5.
    ("minimax_m1_456b", "model.param_dtype", "float32"),
    ("minimax_m1_456b", "model.remat", True),
    ("minimax_m1_456b", "train.grad_accum_steps", 8),
    ("minimax_m1_456b", "train.batch_size", 1024),
    ("minimax_m1_456b", "optimizer.learning_rate", 8e-5),
    ("minimax_m1_456b", "optimizer.schedule", "constant"),
    ("minimax_m1_456b", "data.source", "text"),
    ("minimax_m1_456b", "data.tokenizer", "tokenizer.json"),
    # Shared sections every config inherits.
    ("minimax_m1_456b", "optimizer.b2", 0.95),
    ("tiny", "optimizer.eps", 1e-15),
    ("small", "train.eval_accuracy_mode", "generate"),
    ("tiny", "data.task_options.sort.max_len", 8),
]


def lookup(config, dotted):
  for key in dotted.split("."):
    config = config[key]
  return config


@pytest.mark.parametrize("name,dotted,value", KEY_VALUES)
def test_key_values_are_unchanged(name, dotted, value):
  got = lookup(get_config(name), dotted)
  assert got == value and type(got) is type(value), (name, dotted, got)


@pytest.mark.parametrize("name,depth", [("tiny", 16), ("small", 16), ("minimax_m1_456b", 80)])
def test_layer_pattern_and_deepnorm(name, depth):
  model = get_config(name).model
  assert model.num_hidden_layers == depth
  assert list(model.attn_type_list) == RELEASE_PATTERN * (depth // 8)
  for kind in ("full_attention", "linear_attention", "mlp"):
    assert model[f"layernorm_{kind}_alpha"] == (2 * depth) ** 0.25
    assert model[f"layernorm_{kind}_beta"] == 1.0


def test_model_section_has_exactly_the_model_config_fields():
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  assert set(common.model_config().keys()) == fields
  # The defaults are the release itself.
  assert model_of(common.get_config()) == model_of(get_config("minimax_m1_456b"))


def test_every_field_in_common_has_a_comment_above_it():
  source = open(os.path.join(REPO, "configs", "common.py")).read()
  sections = re.findall(r"^def (?:model|train|optimizer|data)_config\(.*?(?=^def )", source,
                        re.M | re.S)
  lines = "".join(sections).splitlines()
  fields = [i for i, line in enumerate(lines) if re.match(r"^  (model|t|o|d)\.\w+ = ", line)]
  # train: 19 fields (init_from, loss_chunk_tokens included), optimizer 9, data 11 (slices
  # included).
  assert len(sections) == 4 and len(fields) == len(dataclasses.fields(ModelConfig)) + 19 + 9 + 11
  bare = [lines[i] for i in fields if not lines[i - 1].lstrip().startswith("#")]
  assert not bare, bare


@pytest.mark.parametrize("name", CONFIGS)
def test_each_config_builds_a_model_config(name):
  model_of(get_config(name))


# ----------------------------------------------------------------------------- variants
@pytest.mark.parametrize("name", CONFIGS)
def test_layers_variant(name):
  base, eight = get_config(name), get_config(name, "layers=8")
  model = model_of(eight)
  assert model.num_hidden_layers == 8 and list(model.attn_type_list) == RELEASE_PATTERN
  assert model.layernorm_mlp_alpha == model.layernorm_full_attention_alpha == 16 ** 0.25
  # Nothing but the depth and what follows from it moves.
  depth_keys = {"num_hidden_layers", "attn_type_list", "layernorm_full_attention_alpha",
                "layernorm_linear_attention_alpha", "layernorm_mlp_alpha"}
  for key in set(base.model.keys()) - depth_keys:
    assert eight.model[key] == base.model[key], key
  for section in ("train", "optimizer", "data"):
    assert eight[section].to_dict() == base[section].to_dict()
  assert model_of(get_config(name, "layers=24")).num_hidden_layers == 24


@pytest.mark.parametrize("arg,match", [
    ("layers=12", r"layers=12: must be a multiple of 8 .* e\.g\. 8"),
    ("layers=0", r"layers=0: must be a positive int"),
    ("layers=abc", r"variant layers='abc': expected an int"),
    ("layers", r"variant 'layers' needs a value"),
    ("runlocal=maybe", r"variant runlocal='maybe': expected true or false"),
    ("runlocal,runlocal", r"'runlocal' is given twice"),
])
def test_bad_variant_values_are_named(arg, match):
  with pytest.raises(ValueError, match=match):
    get_config("small", arg)


@pytest.mark.parametrize("name", CONFIGS)
def test_unknown_variant_names_the_valid_ones(name):
  with pytest.raises(ValueError, match=r"unknown config variant 'leyers' in 'leyers=8'; "
                                       r"valid: layers=<int>, runlocal"):
    get_config(name, "leyers=8")


def test_parse_variants():
  allowed = {"layers": 16, "runlocal": False, "lr": 0.1, "name": "x"}
  assert common.parse_variants(None, allowed) == allowed
  assert common.parse_variants("", allowed) == allowed
  assert common.parse_variants(" layers=8 , runlocal,lr=0.5,name=y", allowed) == {
      "layers": 8, "runlocal": True, "lr": 0.5, "name": "y"}
  assert common.parse_variants("runlocal=false", allowed)["runlocal"] is False
  with pytest.raises(ValueError, match="valid: none"):
    common.parse_variants("x", {})


# ----------------------------------------------------------------------------- runlocal
@pytest.mark.parametrize("name", CONFIGS)
def test_runlocal_is_small_and_keeps_the_structure(name):
  from m1jax.param_count import count_params
  from m1jax.train.data.tokenizer import ByteTokenizer
  full, config = get_config(name), get_config(name, "runlocal")
  model = model_of(config)
  # Two periods of the released group: the scanned stack still scans.
  assert list(model.attn_type_list) == RELEASE_PATTERN * 2 and model.is_scanned
  assert model.layernorm_mlp_alpha == 32 ** 0.25
  assert model.num_experts_per_tok == full.model.num_experts_per_tok
  assert model.num_key_value_heads < model.num_attention_heads  # still GQA
  assert model.rotary_dim * 2 == model.head_dim  # still half-rotary
  assert model.dtype == model.param_dtype == "float32"
  # tiny.py has 3.5M; this is ~0.3M, two thirds of it in the 16 layers' 4 experts.
  assert count_params(model)["total_params"] < 500_000
  t = config.train
  assert t.num_steps <= 10 and t.batch_size * t.seq_len <= 256
  assert t.batch_size % t.grad_accum_steps == 0
  assert config.optimizer.warmup_steps <= t.num_steps
  # Needs no files: a built-in task through the byte tokenizer, which the vocab holds.
  assert (config.data.source, config.data.tokenizer) == ("task", "byte")
  assert ByteTokenizer.vocab_size <= model.vocab_size
  # The optimizer recipe is the config's own.
  assert config.optimizer.learning_rate == full.optimizer.learning_rate


def test_runlocal_wins_over_layers():
  assert get_config("minimax_m1_456b", "layers=64,runlocal").model.num_hidden_layers == 16


@pytest.mark.parametrize("types,kept", [
    ([1, 0, 0, 1, 1], [1, 0, 0, 1, 1]),
    ([0, 1] * 40, [0, 1] * 2),
    (RELEASE_PATTERN, RELEASE_PATTERN),
    ([0] * 9 + [1] + [0] * 10, [0] * 8),
])
def test_runlocal_depth_on_other_patterns(types, kept):
  config = common.get_config()
  common.set_layer_types(config.model, types)
  common.apply_runlocal(config)
  assert list(config.model.attn_type_list) == kept
  assert config.model.layernorm_mlp_alpha == (2 * len(kept)) ** 0.25
  model_of(config)


# ----------------------------------------------------------------------------- import cost
def test_importing_a_config_loads_no_jax_trainer_or_m1jax():
  code = ("import sys, configs.tiny, configs.small, configs.minimax_m1_456b\n"
          "configs.minimax_m1_456b.get_config('runlocal')\n"
          "print(sorted({m.split('.')[0] for m in sys.modules} & "
          "{'jax', 'jaxlib', 'orbax', 'grain', 'flax', 'numpy', 'm1jax'}))\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True).stdout
  assert out.strip() == "[]", out


# ----------------------------------------------------------------------------- overrides
def test_override_keys_matches_ml_collections_syntax():
  argv = ["prog", "--config=configs/tiny.py", "--config.train.num_steps=5",
          "--config.optimizer.b1", "0.8", "--noconfig.train.plot", "-config.data.task=sort",
          "--configx.a=1", "--workdir=/tmp/x"]
  assert config_overrides.override_keys(argv) == [
      "train.num_steps", "optimizer.b1", "train.plot", "data.task"]


def test_unknown_override_keys_name_the_key_and_the_valid_keys():
  config = get_config("tiny")
  check = lambda *args: config_overrides.unknown_override_keys(config, ["prog", *args])
  assert check("--config.train.num_steps=7", "--config.data.task_options.sort.max_len=3",
               "--noconfig.train.plot", "--config.model.attn_type_list[0]=1") == []
  (problem,) = check("--config.train.num_step=7")
  assert problem.startswith("unknown config key 'train.num_step' in --config.train.num_step: "
                            "train has no 'num_step'; did you mean 'num_steps'?")
  assert "(valid: async_checkpointing, batch_size," in problem
  (problem,) = check("--config.trian.seed=1")
  assert "the config has no 'trian'" in problem and "(valid: data, mesh, model, optimizer, train)" in problem
  (problem,) = check("--config.train.seed.x=1")
  assert "train.seed is a value (int), not a section; it has no 'x'" in problem
  # Every unknown key is reported, each once.
  assert len(check("--config.a=1", "--config.b=2", "--config.a=3")) == 2


def _parse(argv, default="configs/tiny.py"):
  argv = ["train", *argv]
  values = flags.FlagValues()
  holder = config_overrides.define_config_file("config", default, "", flag_values=values,
                                               sys_argv=argv)
  config_overrides.parse_flags(argv, flag_values=values)
  return holder.value


def test_parse_flags_applies_the_default_variants_and_overrides():
  config = _parse(["--config.train.num_steps=7", "--config.optimizer.learning_rate=0.5"])
  assert (config.model.hidden_size, config.train.num_steps) == (64, 7)
  assert config.optimizer.learning_rate == 0.5
  config = _parse(["--config", "configs/minimax_m1_456b.py:layers=8",
                   "--config.data.tokenizer=byte"])
  assert (config.model.num_hidden_layers, config.data.tokenizer) == (8, "byte")
  assert _parse(["--config=configs/small.py:runlocal"]).train.num_steps == 6
  assert _parse([], default=None) is None


def test_parse_flags_exits_naming_the_unknown_key(capsys):
  with pytest.raises(SystemExit) as exit_info:
    _parse(["--config=configs/small.py", "--config.train.nope=1",
            "--config.optimizer.learning_rate=0.5"])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith("FATAL Flags parsing error: flag --config=configs/small.py: "
                        "unknown config key 'train.nope' in --config.train.nope: train has no "
                        "'nope' (valid: async_checkpointing,")


def test_parse_flags_reports_a_bad_variant(capsys):
  with pytest.raises(SystemExit):
    _parse(["--config=configs/tiny.py:layers=9"])
  assert "layers=9: must be a multiple of 8" in capsys.readouterr().err


def test_train_help_lists_the_config_flag_and_loads_no_trainer():
  run = subprocess.run([sys.executable, "-X", "importtime", "-m", "experiments.train", "--help"],
                       cwd=REPO, capture_output=True, text=True)
  assert "--config: A configs/*.py file" in run.stdout
  assert "(default: 'configs/tiny.py')" in run.stdout
  imported = set(re.findall(r"\|\s+([\w.]+)$", run.stderr, re.M))
  assert "absl.flags" in imported and not imported & {"m1jax.train", "orbax", "grain", "optax"}


@pytest.mark.slow
def test_runlocal_trains_the_release_config(tmp_path):
  # The config whose data (text files, the release tokenizer) is not in the repo.
  from m1jax.train import train_and_evaluate
  config = get_config("minimax_m1_456b", "runlocal")
  config.train.tensorboard = config.train.plot = False
  summary = train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == config.train.num_steps == summary["last_checkpoint"]
  assert summary["last_eval"]["step"] == config.train.num_steps
