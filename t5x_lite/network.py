"""The T5 encoder-decoder as a Flax linen module (layers, stacks, masks, logits).

Parameter tree (scanned layers stack each layer's params on a leading 'layers' axis under
`layers`; unscanned layers are `layers_0`, `layers_1`, ...):
  token_embedder/embedding                               [vocab, embed]
  encoder/relpos_bias/rel_embedding                      [relpos_buckets, heads]
  encoder/layers/pre_attention_layer_norm/scale          [layers, embed]
  encoder/layers/attention/{query,key,value}/kernel      [layers, embed, joined_kv]
  encoder/layers/attention/out/kernel                    [layers, joined_kv, embed]
  encoder/layers/pre_mlp_layer_norm/scale
  encoder/layers/mlp/{wi | wi_0, wi_1}/kernel            [layers, embed, mlp]
  encoder/layers/mlp/wo/kernel                           [layers, mlp, embed]
  encoder/encoder_norm/scale
  decoder/relpos_bias/rel_embedding
  decoder/layers/{pre_self_attention_layer_norm, self_attention,
                  pre_cross_attention_layer_norm, encoder_decoder_attention,
                  pre_mlp_layer_norm, mlp}/...
  decoder/decoder_norm/scale
  decoder/logits_dense/kernel                            [embed, vocab]  (untied models only)
"""

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from t5x_lite import attention
from t5x_lite.config import T5Config
from t5x_lite.layers import (
  MLP,
  Attention,
  Dense,
  Embed,
  RelativePositionBias,
  RMSNorm,
  activation_dtype,
  constrain,
  mlp_init,
)


def remat_policy(name: str):
  """The jax.checkpoint policy behind a config's remat_policy name (see config.REMAT_POLICIES)."""
  policies = jax.checkpoint_policies
  return {
    "full": policies.nothing_saveable,
    "minimal": policies.dots_with_no_batch_dims_saveable,
    "save_dots": saving_fused_attention(policies.checkpoint_dots),
    "save_attention_out": policies.save_only_these_names("attention_out", "mlp_out"),
    # bfloat16 projections, attention context and MLP pre-activations are kept; attention
    # logits/softmax (recomputed from query and key: the only matmuls redone) and the float32
    # norm internals (elementwise) are not. With a fused kernel there are no scores to drop: its
    # outputs are kept and nothing of attention is recomputed. See config.REMAT_POLICIES.
    "lean": saving_fused_attention(policies.save_only_these_names(*LEAN_SAVED_NAMES)),
  }[name]


LEAN_SAVED_NAMES = ("query", "key", "value", "attention_context", "attention_out", "mlp_hidden")


def saving_fused_attention(policy):
  """`policy`, also saving a fused attention kernel's forward outputs (the context and its
  softmax statistics, [batch, heads, q] float32): its backward needs them, and without them the
  forward kernel would run again in the backward pass."""

  def save(prim, *args, **params):
    return prim.name in attention.FUSED_FORWARD_PRIMITIVES or policy(prim, *args, **params)

  return save


def dropout(cfg: T5Config, enable: bool, x):
  if enable and cfg.dropout_rate > 0:
    return nn.Dropout(cfg.dropout_rate, deterministic=False)(x)
  return x


class EncoderLayer(nn.Module):
  cfg: T5Config
  enable_dropout: bool = False

  @nn.compact
  def __call__(self, x, bias, mask):
    # x: [batch, length, embed]; bias: [batch|1, heads, length, length]; mask: AttentionMask
    cfg, drop = self.cfg, self.enable_dropout
    h = RMSNorm(cfg, name="pre_attention_layer_norm")(x)
    h = Attention(cfg, drop, name="attention")(h, h, bias, mask)
    x = x + dropout(cfg, drop, checkpoint_name(h, "attention_out"))
    h = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
    h = MLP(cfg, drop, name="mlp")(h)
    x = x + dropout(cfg, drop, checkpoint_name(h, "mlp_out"))
    return constrain(x, "batch", "length", "embed"), None  # (carry, output) for nn.scan


class DecoderLayer(nn.Module):
  cfg: T5Config
  enable_dropout: bool = False
  decode: bool = False

  @nn.compact
  def __call__(self, x, bias, mask, encoded, cross_mask, decode_step):
    cfg, drop = self.cfg, self.enable_dropout
    h = RMSNorm(cfg, name="pre_self_attention_layer_norm")(x)
    h = Attention(cfg, drop, name="self_attention")(h, h, bias, mask, self.decode, decode_step)
    x = x + dropout(cfg, drop, checkpoint_name(h, "attention_out"))
    h = RMSNorm(cfg, name="pre_cross_attention_layer_norm")(x)
    h = Attention(cfg, drop, name="encoder_decoder_attention")(h, encoded, None, cross_mask)
    x = x + dropout(cfg, drop, checkpoint_name(h, "attention_out"))
    h = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
    h = MLP(cfg, drop, name="mlp")(h)
    x = x + dropout(cfg, drop, checkpoint_name(h, "mlp_out"))
    return constrain(x, "batch", "length", "embed"), None


def layer_stack(cfg: T5Config, layer_cls, num_layers: int, num_args: int, **layer_kwargs):
  """Builds `num_layers` layers (call inside a compact method); returns x, *args -> x.

  Scanned, one layer is traced and compiled whatever the depth. Remat wraps each layer.
  """
  if cfg.remat_policy != "none":
    layer_cls = nn.remat(
      layer_cls, policy=remat_policy(cfg.remat_policy), prevent_cse=not cfg.scan_layers
    )
  if cfg.scan_layers:
    scanned = nn.scan(
      layer_cls,
      variable_axes={"params": 0, "cache": 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast,) * num_args,
      length=num_layers,
      unroll=min(cfg.scan_unroll, num_layers),
      metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg=cfg, name="layers", **layer_kwargs)
    return lambda x, *args: scanned(x, *args)[0]
  layers = [layer_cls(cfg=cfg, name=f"layers_{i}", **layer_kwargs) for i in range(num_layers)]

  def apply(x, *args):
    for layer in layers:
      x = layer(x, *args)[0]
    return x

  return apply


def default_positions(tokens, positions):
  """Given positions, or 0..length-1 as [1, length]: the relative position bias of unpacked
  batches is then computed once, not per example (it broadcasts over the batch)."""
  if positions is not None:
    return positions
  return jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]


def attention_mask(query_valid, key_valid, query_segments=None, key_segments=None, causal=False):
  """[batch, q] and [batch, k] -> attention.AttentionMask: both valid, same segment, causal.

  Unpacked rows (no segments) are padded at the end, so their valid counts are lengths too.
  """
  mask = query_valid[:, :, None] & key_valid[:, None, :]
  if query_segments is not None:
    mask &= query_segments[:, :, None] == key_segments[:, None, :]
  if causal:
    q, k = query_valid.shape[1], key_valid.shape[1]
    mask &= jnp.arange(q)[:, None] >= jnp.arange(k)[None, :]
  if query_segments is not None:
    return attention.AttentionMask(mask[:, None], causal=causal)
  return attention.AttentionMask(
    mask[:, None],
    attention.suffix_lengths(query_valid),
    attention.suffix_lengths(key_valid),
    causal,
  )


class Encoder(nn.Module):
  cfg: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None, enable_dropout=False):
    cfg = self.cfg
    x = dropout(cfg, enable_dropout, self.shared_embedding(tokens))  # [batch, length, embed]
    positions = default_positions(tokens, positions)
    bias = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")(positions, positions)
    valid = tokens > 0
    mask = attention_mask(valid, valid, segment_ids, segment_ids)
    x = layer_stack(cfg, EncoderLayer, cfg.num_encoder_layers, 2, enable_dropout=enable_dropout)(
      x, bias, mask
    )
    x = RMSNorm(cfg, name="encoder_norm")(x)
    return dropout(cfg, enable_dropout, x)


class Decoder(nn.Module):
  cfg: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(
    self,
    encoded,
    encoder_input_tokens,
    decoder_input_tokens,
    decoder_target_tokens=None,
    encoder_segment_ids=None,
    decoder_segment_ids=None,
    decoder_positions=None,
    enable_dropout=False,
    decode=False,
  ):
    cfg = self.cfg
    x = dropout(cfg, enable_dropout, self.shared_embedding(decoder_input_tokens))
    relpos = RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")
    batch, length = decoder_input_tokens.shape
    encoder_valid = encoder_input_tokens > 0
    cached = self._advance_cache(length) if decode else None
    if cached is not None:
      decode_step, key_positions = cached
      bias, mask, cross_mask = _step_masks(relpos, batch, decode_step, key_positions, encoder_valid)
    else:
      decode_step = None
      bias, mask, cross_mask = _sequence_masks(
        relpos,
        decoder_input_tokens,
        decoder_target_tokens,
        decoder_segment_ids,
        decoder_positions,
        encoder_valid,
        encoder_segment_ids,
      )
    stack = layer_stack(
      cfg, DecoderLayer, cfg.num_decoder_layers, 5, enable_dropout=enable_dropout, decode=decode
    )
    x = stack(x, bias, mask, encoded, cross_mask, decode_step)
    x = dropout(cfg, enable_dropout, RMSNorm(cfg, name="decoder_norm")(x))
    return self._logits(x)  # [batch, length, vocab]

  def _advance_cache(self, length: int):
    """While decoding: (this token's position, the cached key positions [length]), counting the
    step; None on the call that makes the cache."""
    initialized = self.has_variable("cache", "step")
    step = self.variable("cache", "step", lambda: jnp.zeros((), jnp.int32))
    # Its shape records the cache length chosen when the cache was made.
    key_positions = self.variable(
      "cache", "key_positions", lambda: jnp.arange(length, dtype=jnp.int32)
    )
    if not initialized:
      return None
    decode_step = step.value
    step.value = decode_step + 1
    return decode_step, key_positions.value

  def _logits(self, x):
    cfg = self.cfg
    if cfg.tie_word_embeddings:
      # v1.0: rescale before the tied projection (the embedding is normal(1.0)).
      logits = self.shared_embedding.attend(x * jnp.asarray(cfg.d_model**-0.5, x.dtype))
    else:
      logits = Dense(
        cfg.vocab_size,
        ("embed", "vocab"),
        mlp_init,
        activation_dtype(cfg),
        out_dtype=jnp.float32,
        name="logits_dense",
      )(x)
    return constrain(logits.astype(jnp.float32), "batch", "length", "vocab")


def _step_masks(relpos, batch: int, decode_step, key_positions, encoder_valid):
  """(bias, mask, cross_mask) of one decoded token at position `decode_step`, attending to the
  cached keys 0..decode_step."""
  query_pos = jnp.full((batch, 1), decode_step, jnp.int32)
  key_pos = jnp.broadcast_to(key_positions, (batch,) + key_positions.shape)
  bias = relpos(query_pos, key_pos)
  mask = attention.AttentionMask((key_pos <= decode_step)[:, None, None, :])
  cross_mask = attention_mask(jnp.ones((batch, 1), bool), encoder_valid)
  return bias, mask, cross_mask


def _sequence_masks(
  relpos, input_tokens, target_tokens, segment_ids, positions, encoder_valid, encoder_segment_ids
):
  """(bias, mask, cross_mask) of whole target sequences: causal, within each packed segment."""
  batch, length = input_tokens.shape
  # Padding comes from the targets: the inputs start with token 0 (decoder start = pad id).
  if target_tokens is not None:
    valid = target_tokens > 0
  elif segment_ids is not None:
    valid = segment_ids > 0
  else:
    valid = jnp.ones((batch, length), bool)
  positions = default_positions(input_tokens, positions)
  bias = relpos(positions, positions)
  mask = attention_mask(valid, valid, segment_ids, segment_ids, causal=True)
  cross_mask = attention_mask(valid, encoder_valid, segment_ids, encoder_segment_ids)
  return bias, mask, cross_mask


class Transformer(nn.Module):
  """T5 encoder-decoder: tokens in, float32 logits [batch, target_length, vocab] out."""

  cfg: T5Config

  def setup(self):
    self.token_embedder = Embed(self.cfg)
    self.encoder = Encoder(self.cfg, self.token_embedder)
    self.decoder = Decoder(self.cfg, self.token_embedder)

  def encode(
    self,
    encoder_input_tokens,
    encoder_segment_ids=None,
    encoder_positions=None,
    enable_dropout=False,
  ):
    """[batch, input_length] -> [batch, input_length, embed]."""
    return self.encoder(
      encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout
    )

  def decode(
    self,
    encoded,
    encoder_input_tokens,
    decoder_input_tokens,
    decoder_target_tokens=None,
    encoder_segment_ids=None,
    decoder_segment_ids=None,
    decoder_positions=None,
    enable_dropout=False,
    decode=False,
  ):
    """Logits for the decoder inputs given the encoder output.

    With decode=True, the first call (cache collection empty and mutable) sizes the cache from
    `decoder_input_tokens` [batch, max_length]; each later call feeds one token [batch, 1].
    """
    return self.decoder(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      decoder_target_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
      decoder_positions,
      enable_dropout,
      decode,
    )

  def __call__(
    self,
    encoder_input_tokens,
    decoder_input_tokens,
    decoder_target_tokens=None,
    encoder_segment_ids=None,
    decoder_segment_ids=None,
    encoder_positions=None,
    decoder_positions=None,
    enable_dropout=False,
  ):
    encoded = self.encode(
      encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout
    )
    return self.decode(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      decoder_target_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
      decoder_positions,
      enable_dropout,
    )
