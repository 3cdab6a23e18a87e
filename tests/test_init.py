"""Initialisation: every parameter drawn as T5X draws it (its example network and flaxformer).

Each parameter's rule is read off its name and the config, never off the code's own initialisers,
and checked on the initial values: the std, the shape of the distribution (normal, truncated
normal or uniform: kurtosis and the tails), and ones where T5X has ones.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import models
from t5x_lite.config import T5Config

# Small enough to initialise in a second, wide enough for the statistics: 32 heads x 64 buckets give
# the smallest tensors (the relative-position tables) 2,048 values.
V1_0 = T5Config(
  name="init-v1_0",
  vocab_size=4096,
  d_model=256,
  d_ff=1024,
  num_heads=32,
  d_kv=16,
  num_encoder_layers=2,
  num_decoder_layers=2,
  feed_forward_proj="relu",
  tie_word_embeddings=True,
  relative_attention_num_buckets=64,
)
# Every kind of parameter, in three inits: v1.0 (tied, relu), -sh (one key and one value head),
# v1.1 (untied logits, gated-gelu) with -skv (no value projection).
CONFIGS = {
  "v1_0": V1_0,
  "v1_0-sh": dataclasses.replace(V1_0, shared_heads=True),
  "v1_1-skv": dataclasses.replace(
    V1_0, feed_forward_proj="gated-gelu", tie_word_embeddings=False, tied_key_value=True
  ),
}

# flax's truncated normal cuts at 2 stds of a normal widened by 1/0.8796 to keep the variance.
TRUNCATED_BOUND = 2 / 0.87962566103423978
# Kurtosis of each family: normal 3, normal truncated at +-2 sigma 2.37, uniform 1.8.
KURTOSIS = {"normal": 3.0, "truncated_normal": 2.366, "uniform": 1.8}


def t5x_rule(path: tuple[str, ...], cfg: T5Config) -> tuple[str, float]:
  """(distribution, std) of the parameter at `path` under T5X's initialisation."""
  module, name = path[-2], path[-1]
  if name == "scale":
    return "ones", 0.0
  if name == "embedding":
    return "normal", 1.0
  if name == "rel_embedding":  # variance_scaling(1.0, 'fan_avg', 'uniform') on [heads, buckets]
    return "uniform", math.sqrt(2 / (cfg.num_heads + cfg.relative_attention_num_buckets))
  fan_in = {
    "query": cfg.d_model,
    "key": cfg.d_model,
    "value": cfg.d_model,
    "out": cfg.inner_dim,
    "wi": cfg.d_model,
    "wi_0": cfg.d_model,
    "wi_1": cfg.d_model,
    "wo": cfg.d_ff,
    "logits_dense": cfg.d_model,
  }[module]
  std = fan_in**-0.5
  if module in ("query", "key", "value", "out"):  # variance_scaling(1.0, 'fan_in', 'normal')
    return "normal", (std / math.sqrt(cfg.d_kv) if module == "query" else std)
  return "truncated_normal", std  # variance_scaling(1.0, 'fan_in', 'truncated_normal')


def check(where: str, x: np.ndarray, rule: str, std: float):
  x = x.astype(np.float64).ravel()
  if rule == "ones":
    assert np.all(x == 1.0), where
    return
  s, peak = x.std(), np.abs(x).max()
  kurtosis = np.mean((x - x.mean()) ** 4) / s**4
  assert abs(s / std - 1) < 0.04, f"{where}: std {s:.4g}, T5X's {rule} {std:.4g}"
  assert abs(x.mean()) < 5 * std / math.sqrt(x.size), f"{where}: mean {x.mean():.3g}"
  assert abs(kurtosis - KURTOSIS[rule]) < 0.3, f"{where}: kurtosis {kurtosis:.3f}, {rule}?"
  bound = {"normal": math.inf, "truncated_normal": TRUNCATED_BOUND, "uniform": math.sqrt(3)}[rule]
  if rule == "normal":  # untruncated: well past where either bounded rule stops
    assert peak > 3 * std, f"{where}: max |x| {peak / std:.2f} std, a normal's tails?"
  else:  # within the bound, and filling it
    assert 0.97 * bound * std < peak <= bound * std * (1 + 1e-6), (
      f"{where}: max |x| {peak / std:.3f} std, the {rule} bound {bound:.3f}"
    )


SEED = 3


@pytest.fixture(scope="module")
def init_params():
  """family -> its initial params, each initialised once for this module."""

  @functools.cache
  def init(family: str):
    model = models.EncoderDecoderModel(CONFIGS[family])
    return jax.jit(model.init_params, static_argnums=(1, 2))(jax.random.key(SEED), 1, 1)

  return init


@pytest.mark.parametrize("family", CONFIGS)
def test_every_parameter_follows_t5x_init(init_params, family):
  cfg = CONFIGS[family]
  params = init_params(family)
  seen = set()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = tuple(k.key for k in path)
    rule, std = t5x_rule(names, cfg)
    check("/".join(names), np.asarray(leaf), rule, std)
    seen.add(names[-2] if names[-1] == "kernel" else names[-1])
  expected = {"embedding", "rel_embedding", "scale", "query", "key", "out"}
  expected |= {"wi_0", "wi_1"} if cfg.feed_forward_proj == "gated-gelu" else {"wi"}
  expected |= set() if cfg.tied_key_value else {"value"}
  expected |= set() if cfg.tie_word_embeddings else {"logits_dense"}
  assert seen == expected | {"wo"}


class _T5XRelativePositionBiases(nn.Module):
  """The parameter of T5X's RelativePositionBiases as its example network makes it."""

  cfg: T5Config

  @nn.compact
  def __call__(self):
    init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
    shape = (self.cfg.num_heads, self.cfg.relative_attention_num_buckets)
    return self.param("rel_embedding", init, shape, jnp.float32)


class _T5XStack(nn.Module):
  cfg: T5Config

  @nn.compact
  def __call__(self):
    return _T5XRelativePositionBiases(self.cfg, name="relpos_bias")()


class _T5XTables(nn.Module):
  """T5X's Transformer reduced to its relative-position tables, at the same module paths."""

  cfg: T5Config

  def setup(self):
    self.encoder = _T5XStack(self.cfg)
    self.decoder = _T5XStack(self.cfg)

  def __call__(self):
    return self.encoder(), self.decoder()


def test_relative_position_tables_equal_t5x_for_the_same_key(init_params):
  ours = init_params("v1_0")
  t5x = _T5XTables(V1_0).init({"params": jax.random.key(SEED)})["params"]
  for stack in ("encoder", "decoder"):
    table = np.asarray(ours[stack]["relpos_bias"]["rel_embedding"])
    assert table.shape == (64, 32)  # stored [buckets, heads], as before and as HF
    np.testing.assert_array_equal(table, np.asarray(t5x[stack]["relpos_bias"]["rel_embedding"]).T)
