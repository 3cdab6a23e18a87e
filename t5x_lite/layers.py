"""T5 building blocks in Flax linen: norm, embedding, relative position bias, attention, MLP.

Parameters are float32 and carry logical axis names; activations run in the config's dtype.
No biases anywhere, and attention logits are not scaled by 1/sqrt(d_kv) (the query init is).
"""

import math

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from t5x_lite import attention
from t5x_lite.config import T5Config

# Replaces attention logits where the mask is off; finite so fully masked rows stay finite.
NEG_INF = -1e10

# Initializers as T5X uses them.
embedding_init = nn.initializers.normal(stddev=1.0)
attention_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
mlp_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def relpos_init(key, shape, dtype=jnp.float32):
  """T5X's relative-position table init: uniform with std sqrt(2 / (heads + buckets)).

  T5X keeps the table as [heads, buckets] and ours is [buckets, heads]: drawing in T5X's layout and
  transposing gives, for the same key, exactly T5X's values.
  """
  buckets, heads = shape
  uniform = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
  return uniform(key, (heads, buckets), dtype).T


def activation_dtype(cfg: T5Config):
  return jnp.dtype(cfg.dtype)


def constrain(x, *names):
  """Names an activation's axes so that the partitioning rules can shard it."""
  return nn.with_logical_constraint(x, names)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, no bias; computed in float32."""

  cfg: T5Config

  @nn.compact
  def __call__(self, x):
    scale = self.param(
      "scale",
      nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      (x.shape[-1],),
      jnp.float32,
    )
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(variance + self.cfg.layer_norm_epsilon) * scale
    return y.astype(activation_dtype(self.cfg))


class Embed(nn.Module):
  """Token embedding, shared by encoder input, decoder input and (when tied) the logits."""

  cfg: T5Config

  def setup(self):
    self.embedding = self.param(
      "embedding",
      nn.with_logical_partitioning(embedding_init, ("vocab", "embed")),
      (self.cfg.vocab_size, self.cfg.d_model),
      jnp.float32,
    )

  def __call__(self, tokens):
    # A gather, not a one-hot matmul: cheap and exact.
    x = jnp.take(self.embedding, tokens, axis=0).astype(activation_dtype(self.cfg))
    return constrain(x, "batch", "length", "embed")  # [batch, length, embed]

  def attend(self, x):
    """Tied output projection: [batch, length, embed] -> float32 [batch, length, vocab]."""
    dtype = activation_dtype(self.cfg)
    return jnp.einsum(
      "bld,vd->blv", x, self.embedding.astype(dtype), preferred_element_type=jnp.float32
    )


class Dense(nn.Module):
  """A bias-free projection of the last axis with a named 2-D float32 kernel."""

  features: int
  axes: tuple[str, str]
  init: nn.initializers.Initializer
  dtype: jnp.dtype = jnp.float32
  out_dtype: jnp.dtype | None = None  # e.g. float32 logits from bfloat16 activations

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
      "kernel",
      nn.with_logical_partitioning(self.init, self.axes),
      (x.shape[-1], self.features),
      jnp.float32,
    )
    return jnp.einsum(
      "...d,df->...f",
      x.astype(self.dtype),
      kernel.astype(self.dtype),
      preferred_element_type=self.out_dtype,
    )


def relative_position_bucket(
  relative_position, bidirectional: bool, num_buckets: int, max_distance: int
):
  """Maps key_position - query_position to a bucket, exactly as HF's T5 does.

  Half the buckets hold exact small distances, the rest grow logarithmically up to max_distance.
  The encoder tells left from right (bidirectional); the decoder only looks back.
  """
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(relative_position.dtype) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  # Clamp below at max_exact only where the small branch is taken anyway (avoids log(0)).
  far = jnp.maximum(distance, max_exact).astype(jnp.float32)
  if_large = max_exact + (
    jnp.log(far / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(relative_position.dtype)
  if_large = jnp.minimum(if_large, num_buckets - 1)
  return buckets + jnp.where(is_small, distance, if_large)


class RelativePositionBias(nn.Module):
  """One learned bias per (bucket, head); one table per stack, shared by all its layers."""

  cfg: T5Config
  bidirectional: bool

  @nn.compact
  def __call__(self, query_positions, key_positions):
    """Positions [batch|1, q] and [batch|1, k] -> float32 bias [batch|1, heads, q, k]."""
    table = self.param(
      "rel_embedding",
      nn.with_logical_partitioning(relpos_init, ("relpos_buckets", "heads")),
      (self.cfg.relative_attention_num_buckets, self.cfg.num_heads),
      jnp.float32,
    )
    relative = key_positions[:, None, :] - query_positions[:, :, None]  # [batch, q, k]
    buckets = relative_position_bucket(
      relative.astype(jnp.int32),
      self.bidirectional,
      self.cfg.relative_attention_num_buckets,
      self.cfg.relative_attention_max_distance,
    )
    bias = jnp.take(table, buckets, axis=0)  # [batch, q, k, heads]
    return jnp.transpose(bias, (0, 3, 1, 2))


def dot_product_attention(
  query, key, value, bias=None, mask=None, dtype=jnp.float32, weights_fn=None
):
  """T5's attention core: unscaled scores, float32 softmax, weighted sum of values.

  query [batch, q, heads, d_kv]; key, value [batch, k, kv_heads, d_kv] where kv_heads divides
  heads (1: one key/value head shared by all query heads); bias float32 [batch|1, heads, q, k]
  (the relative position bias); mask boolean [batch|1, 1, q, k]. Returns [batch, q, heads, d_kv].
  The mask selects rather than adds, so no [batch, heads, q, k] bias is ever materialised.
  """
  batch, q_len, heads, d_kv = query.shape
  kv_heads, k_len = key.shape[2], key.shape[1]
  grouped = query.reshape(batch, q_len, kv_heads, heads // kv_heads, d_kv)
  logits = jnp.einsum("bqgrd,bkgd->bgrqk", grouped, key, preferred_element_type=jnp.float32)
  logits = logits.reshape(batch, heads, q_len, k_len)
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = jnp.where(mask, logits, NEG_INF)
  weights = jax.nn.softmax(logits, axis=-1).astype(dtype)  # [batch, heads, q, k]
  if weights_fn is not None:
    weights = weights_fn(weights)
  weights = weights.reshape(batch, kv_heads, heads // kv_heads, q_len, k_len)
  out = jnp.einsum("bgrqk,bkgd->bqgrd", weights, value.astype(dtype))
  return out.reshape(batch, q_len, heads, d_kv)


def attend(cfg: T5Config, query, key, value, bias, mask: attention.AttentionMask, weights_fn):
  """Attention by the kernel `cfg.attention_impl` resolves to (attention.choose).

  Projections and the xla kernel's context carry checkpoint names that remat policies save
  (network.py); its logits and softmax carry none: they are recomputed from the saved query and
  key.
  """
  query = checkpoint_name(query, "query")
  key = checkpoint_name(key, "key")
  value = checkpoint_name(value, "value")
  kernel = attention.choose(
    cfg.attention_impl,
    cfg.dtype,
    cfg.d_kv,
    query.shape[1],
    key.shape[1],
    dropout=weights_fn is not None,
  )
  if kernel == "xla":
    out = dot_product_attention(
      query, key, value, bias, mask.dense, activation_dtype(cfg), weights_fn
    )
    return checkpoint_name(out, "attention_context")
  # Not named: the policies that keep the context keep the fused kernel's outputs, the context
  # among them (network.saving_fused_attention); a named copy would be saved twice.
  return attention.fused_attention(
    query, key, value, bias, mask, attention.JAX_IMPLEMENTATION[kernel]
  )


class Attention(nn.Module):
  """Multi-head attention without 1/sqrt(d) scaling; the query init is scaled instead.

  `bias` [batch|1, heads, q, k] is the relative position bias (or None) and `mask` an
  attention.AttentionMask. With `decode=True` keys and values of past steps live in the 'cache'
  collection and each call processes one new token at position `decode_step`.
  Keys and values have `cfg.num_kv_heads` heads: one with shared heads (`-sh`, multi-query
  attention), whose projections are named ('embed', 'kv') so the rules replicate that single head
  rather than split it over `model`. With tied key/value (`-skv`) there is no `value` projection:
  the values are the keys, and the cache holds them once.
  """

  cfg: T5Config
  enable_dropout: bool = False

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, bias, mask, decode: bool = False, decode_step=None):
    cfg = self.cfg
    dtype = activation_dtype(cfg)
    query_init = lambda key, shape, dt: attention_init(key, shape, dt) / math.sqrt(cfg.d_kv)
    kv_axes = ("embed", "kv") if cfg.shared_heads else ("embed", "joined_kv")
    kv_head_axis = None if cfg.shared_heads else "heads"

    def split_heads(x, heads, head_axis):  # [batch, length, joined] -> [batch, length, heads, kv]
      x = x.reshape(x.shape[:-1] + (heads, cfg.d_kv))
      return constrain(x, "batch", "length", head_axis, "kv")

    query = Dense(cfg.inner_dim, ("embed", "joined_kv"), query_init, dtype, name="query")(inputs_q)
    query = split_heads(query, cfg.num_heads, "heads")
    project_kv = lambda name: split_heads(
      Dense(cfg.kv_inner_dim, kv_axes, attention_init, dtype, name=name)(inputs_kv),
      cfg.num_kv_heads,
      kv_head_axis,
    )
    key = project_kv("key")  # [batch, kv_length, kv_heads, kv]
    value = key if cfg.tied_key_value else project_kv("value")

    if decode:
      is_initialized = self.has_variable("cache", "cached_key")
      cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
      if not cfg.tied_key_value:
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
      if is_initialized:  # One new token: write it at decode_step and attend to the whole cache.
        index = (0, decode_step, 0, 0)
        if not cfg.tied_key_value:
          cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, index)
          value = cached_value.value
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, index)
        key = cached_key.value
        if cfg.tied_key_value:
          value = key

    # Each key/value head serves num_heads / num_kv_heads query heads; the core groups the
    # query heads instead of copying the shared key/value head.
    weights_fn = None
    if self.enable_dropout and cfg.dropout_rate > 0:
      weights_fn = nn.Dropout(cfg.dropout_rate, deterministic=False)
    out = attend(cfg, query, key, value, bias, mask, weights_fn)
    out = constrain(out, "batch", "length", "heads", "kv")  # [batch, q, heads, kv]
    out = out.reshape(out.shape[:2] + (cfg.inner_dim,))
    out = Dense(cfg.d_model, ("joined_kv", "embed"), attention_init, dtype, name="out")(out)
    return constrain(out, "batch", "length", "embed")  # [batch, q, embed]


def gelu_new(x):
  """HF `gelu_new`: the tanh approximation of GELU."""
  return jax.nn.gelu(x, approximate=True)


class MLP(nn.Module):
  """relu: wo(relu(wi x)); gated-gelu (v1.1): wo(gelu(wi_0 x) * wi_1 x)."""

  cfg: T5Config
  enable_dropout: bool = False

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    dtype = activation_dtype(cfg)
    # The pre-activation is what remat policies save ("mlp_hidden"); the activation is recomputed.
    up = lambda name: checkpoint_name(
      Dense(cfg.d_ff, ("embed", "mlp"), mlp_init, dtype, name=name)(x), "mlp_hidden"
    )
    if cfg.feed_forward_proj == "gated-gelu":
      h = gelu_new(up("wi_0")) * up("wi_1")
    else:
      h = jax.nn.relu(up("wi"))
    h = constrain(h, "batch", "length", "mlp")  # [batch, length, mlp]
    if self.enable_dropout and cfg.dropout_rate > 0:
      h = nn.Dropout(cfg.dropout_rate, deterministic=False)(h)
    out = Dense(cfg.d_model, ("mlp", "embed"), mlp_init, dtype, name="wo")(h)
    return constrain(out, "batch", "length", "embed")
