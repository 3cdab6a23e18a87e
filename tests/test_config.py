"""Model names, configs, parameter counts (against HF), FLOPs, model gins and model_info."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import gin
import pytest

from t5x_lite import config, gin_utils, models
from t5x_lite.config import T5Config, resolve_model_name
from t5x_lite.errors import UserError

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
  "name,count",
  [
    ("t5-efficient-tiny", 15_570_688),
    ("t5-efficient-tiny-nl32", 66_986_752),
    ("t5-efficient-base", 222_903_552),
    ("t5-efficient-xxl", 11_307_321_344),
  ],
)
def test_released_parameter_counts(name, count):
  assert models.num_params(resolve_model_name(name)) == count


def test_name_grammar():
  cfg = resolve_model_name("t5-efficient-base-el16-dl8")
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.d_model) == (16, 8, 768)
  assert cfg.feed_forward_proj == "relu" and cfg.tie_word_embeddings and cfg.vocab_size == 32128
  cfg = resolve_model_name("t5-efficient-tiny-nl32")
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers) == (32, 32)
  cfg = resolve_model_name("t5-efficient-small-nl4-el2-ff1000-dm256-kv16-nh2")
  assert (
    cfg.num_encoder_layers,
    cfg.num_decoder_layers,
    cfg.d_ff,
    cfg.d_model,
    cfg.d_kv,
    cfg.num_heads,
  ) == (2, 4, 1000, 256, 16, 2)
  assert resolve_model_name("t5-efficient-xl").d_kv == 128
  assert resolve_model_name("t5-efficient-large").d_kv == 64
  # The grammar gives what the name says (HF's released base-ff2000 ships d_ff=2048).
  assert resolve_model_name("t5-efficient-base-ff2000").d_ff == 2000
  v11 = resolve_model_name("t5-v1_1-small")
  assert (v11.d_model, v11.d_ff, v11.num_heads, v11.num_encoder_layers, v11.d_kv) == (
    512,
    1024,
    6,
    8,
    64,
  )
  assert v11.feed_forward_proj == "gated-gelu" and not v11.tie_word_embeddings
  assert resolve_model_name("t5-v1_1-xl-dl4").num_decoder_layers == 4


@pytest.mark.parametrize(
  "name",
  [
    "t5-efficient-huge",
    "t5-efficient",
    "t5-efficient-base-xx4",
    "t5-efficient-base-nl",
    "t5-efficient-base-nl0",
    "t5-v1_1-tiny",
    "bert-base",
    "t5-efficient-base-el16dl8",
  ],
)
def test_bad_names_list_the_grammar(name):
  with pytest.raises(UserError) as e:
    resolve_model_name(name)
  message = str(e.value)
  assert "\n" not in message and "tiny|mini|small|base|large|xl|xxl" in message
  assert "nl|el|dl|ff|dm|kv|nh" in message


@pytest.mark.parametrize(
  "change,match",
  [
    (dict(d_model=0), "d_model"),
    (dict(num_heads=-1), "num_heads"),
    (dict(feed_forward_proj="swish"), "feed_forward_proj"),
    (dict(dtype="float16"), "dtype"),
    (dict(remat_policy="some"), "remat_policy"),
    (dict(dropout_rate=1.0), "dropout_rate"),
  ],
)
def test_config_validation(change, match):
  with pytest.raises(UserError, match=match):
    dataclasses.replace(resolve_model_name("t5-efficient-tiny"), **change)


def _hf_count(cfg: T5Config) -> int:
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  hf_cfg = transformers.T5Config(
    **{
      k: v
      for k, v in config.hf_config_dict(cfg).items()
      if k not in ("architectures", "dtype", "torch_dtype")
    }
  )
  with torch.device("meta"):  # Shapes only: nothing is allocated, even for XXL.
    model = transformers.T5ForConditionalGeneration(hf_cfg)
  count = model.num_parameters()
  if not cfg.tie_word_embeddings and model.lm_head.weight is model.shared.weight:
    count += cfg.vocab_size * cfg.d_model  # Recent transformers tie until a checkpoint unties.
  return count


@pytest.mark.parametrize(
  "name",
  [
    "t5-efficient-tiny",
    "t5-efficient-mini",
    "t5-efficient-small",
    "t5-efficient-base",
    "t5-efficient-large",
    "t5-efficient-xl",
    "t5-efficient-xxl",
    "t5-efficient-tiny-nl32",
    "t5-efficient-base-el16-dl8",
    "t5-efficient-small-kv128-nh4",
    "t5-efficient-mini-dm512-ff3000",
    "t5-efficient-tiny-el3-dl5",
    "t5-v1_1-small",
    "t5-v1_1-base",
    "t5-v1_1-xl-dl2",
  ],
)
def test_counts_match_hf(name):
  cfg = resolve_model_name(name)
  assert models.num_params(cfg) == _hf_count(cfg)


def test_flops_formula():
  cfg = resolve_model_name("t5-efficient-tiny")
  d, a, f, v, e, t = 256, 256, 1024, 32128, 512, 114
  encoder = 2 * e * d * 4 * a + 4 * e * e * a + 4 * e * d * f
  decoder = 2 * t * d * 6 * a + 2 * e * d * 2 * a + 4 * t * t * a + 4 * t * e * a + 4 * t * d * f
  expected = 3 * (4 * encoder + 4 * decoder + 2 * t * d * v)
  assert config.train_flops_per_example(cfg, e, t) == expected
  assert config.flops_per_token(cfg) == expected / (e + t)
  # Roughly 6 FLOPs per non-embedding parameter per token, as for any transformer.
  non_embedding = models.num_params(cfg) - v * d
  assert 4 < config.flops_per_token(cfg) / non_embedding < 8
  gated = dataclasses.replace(cfg, feed_forward_proj="gated-gelu")
  assert config.flops_per_token(gated) > config.flops_per_token(cfg)


def test_hf_config_dict():
  hf = config.hf_config_dict(resolve_model_name("t5-efficient-base-el16-dl8"))
  assert hf["num_layers"] == 16 and hf["num_decoder_layers"] == 8 and hf["model_type"] == "t5"
  assert hf["architectures"] == ["T5ForConditionalGeneration"] and hf["tie_word_embeddings"]
  assert (hf["pad_token_id"], hf["eos_token_id"], hf["decoder_start_token_id"]) == (0, 1, 0)
  json.dumps(hf)


MODEL_GINS = sorted((REPO / "gin" / "models").glob("t5_*.gin"))


@pytest.mark.parametrize("path", MODEL_GINS, ids=lambda p: p.name)
def test_model_gins_parse_and_resolve(path):
  gin.clear_config()
  try:
    gin_utils.parse_gin([str(path)], [])
    cfg = config.model_config()
  finally:
    gin.clear_config()
  stem = path.stem.replace("t5_efficient_", "t5-efficient-").replace("_", "-")
  expected = (
    "t5-efficient-base" if path.stem == "t5_efficient" else stem.replace("t5-1-1-", "t5-v1_1-")
  )
  assert cfg.name == expected
  text = path.read_text()
  for option in ("dtype", "dropout_rate", "scan_layers", "scan_unroll", "remat_policy"):
    assert f"model_config.{option}" not in text


def test_model_config_overrides_and_macro():
  gin.clear_config()
  try:
    gin_utils.parse_gin(
      ["models/t5_efficient.gin"],
      [
        "MODEL_NAME = 't5-efficient-base-el16-dl8'",
        "model_config.dtype = 'bfloat16'",
        "model_config.vocab_size = 4224",
      ],
    )
    cfg = config.model_config()
  finally:
    gin.clear_config()
  assert cfg.name == "t5-efficient-base-el16-dl8" and cfg.num_encoder_layers == 16
  assert cfg.dtype == "bfloat16" and cfg.vocab_size == 4224 and cfg.d_ff == 3072


def _model_info(*args):
  return subprocess.run(
    [sys.executable, "-m", "t5x_lite.model_info", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_model_info_cli():
  out = _model_info("t5-efficient-tiny-nl32", "--input_length=256", "--target_length=64")
  assert out.returncode == 0, out.stderr
  info = json.loads(out.stdout)
  assert info["num_params"] == 66_986_752 and info["input_length"] == 256
  assert info["flops_per_token"] == config.flops_per_token(
    resolve_model_name("t5-efficient-tiny-nl32"), 256, 64
  )
  assert info["hf_config"]["num_layers"] == 32 and info["dims"]["d_model"] == 256
  out = _model_info(
    "--gin_file=models/t5_efficient.gin", "--gin.MODEL_NAME='t5-efficient-base-el16-dl8'"
  )
  assert out.returncode == 0, out.stderr
  assert json.loads(out.stdout)["hf_config"]["num_decoder_layers"] == 8


def test_model_info_errors_are_one_line():
  for args in (["t5-efficient-huge"], ["--gin_file=models/missing.gin"], []):
    out = _model_info(*args)
    assert out.returncode != 0 and out.stdout == ""
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1, (
      out.stderr
    )
    assert "Traceback" not in out.stderr
