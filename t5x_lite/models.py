"""The model around the module (as in T5X): init, loss, scoring and greedy decoding.

Batches are dicts of seqio EncDecFeatureConverter features: `encoder_input_tokens`,
`decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights` and, when packed,
`{encoder,decoder}_segment_ids` and `{encoder,decoder}_positions`.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite.config import T5Config
from t5x_lite.errors import UserError
from t5x_lite.network import Transformer
from t5x_lite.tokens import EOS_ID, PAD_ID

DECODER_START_ID = PAD_ID  # T5 starts decoding from the pad id

_MODEL_INPUTS = (
  "encoder_input_tokens",
  "decoder_input_tokens",
  "decoder_target_tokens",
  "encoder_segment_ids",
  "decoder_segment_ids",
  "encoder_positions",
  "decoder_positions",
)


def cross_entropy_with_z_loss(logits, targets, weights, z_loss: float):
  """Per-token cross-entropy plus T5X's z-loss (z_loss * logsumexp(logits)**2), in float32.

  Returns (loss, z_loss_part) per token, both already multiplied by `weights`.
  """
  logits = logits.astype(jnp.float32)  # [batch, length, vocab]
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [batch, length]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  z_part = z_loss * jnp.square(log_z)
  loss = log_z - target_logit + z_part
  return loss * weights, z_part * weights


# T5X's names for the factors computed from the batch (losses.SpecialLossNormalizingFactor).
NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"  # the non-padding target tokens
NUM_TOTAL_TARGET_TOKENS = "NUM_TOTAL_TARGET_TOKENS"  # batch * target length, padding included
# Earlier spellings, still accepted (configs and checkpoints written with them keep working).
_OLD_FACTOR_NAMES = {
  "num_real_target_tokens": NUM_REAL_TARGET_TOKENS,
  "num_total_target_tokens": NUM_TOTAL_TARGET_TOKENS,
  "num_target_tokens": NUM_REAL_TARGET_TOKENS,
}


def loss_normalizer(loss_normalizing_factor: None | str | float, weights: jax.Array) -> jax.Array:
  """What a summed loss is divided by, given the batch's `decoder_loss_weights`.

  None: 1 (the plain sum, T5X's default; Adafactor is insensitive to scale);
  'NUM_REAL_TARGET_TOKENS': the sum of the weights (at least 1), i.e. a mean over real tokens;
  'NUM_TOTAL_TARGET_TOKENS': batch * target length, so padding dilutes the loss as in Mesh TF T5;
  a positive number: that constant.
  """
  factor = loss_normalizing_factor
  if isinstance(factor, str):
    factor = _OLD_FACTOR_NAMES.get(factor, factor)
  if factor is None:
    return jnp.ones((), jnp.float32)
  if factor == NUM_REAL_TARGET_TOKENS:
    return jnp.maximum(jnp.sum(weights, dtype=jnp.float32), 1.0)
  if factor == NUM_TOTAL_TARGET_TOKENS:
    return jnp.asarray(weights.size, jnp.float32)
  if isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 0:
    return jnp.asarray(factor, jnp.float32)
  raise UserError(
    f"unknown loss_normalizing_factor {loss_normalizing_factor!r}; use "
    f"'{NUM_REAL_TARGET_TOKENS}', '{NUM_TOTAL_TARGET_TOKENS}', a positive number or "
    f"None"
  )


class EncoderDecoderModel:
  """A T5 config and its Flax module, with everything a trainer or evaluator calls."""

  def __init__(self, cfg: T5Config):
    self.cfg = cfg
    self.module = Transformer(cfg)

  # ---- parameters -----------------------------------------------------------------------------

  def _init_boxed(self, rng, input_length: int, target_length: int):
    """The Flax init: params still boxed with their logical axis names."""
    encoder = jnp.ones((1, input_length), jnp.int32)
    decoder = jnp.ones((1, target_length), jnp.int32)
    return self.module.init({"params": rng}, encoder, decoder, decoder)["params"]

  def _abstract_boxed(self, input_length: int, target_length: int):
    init = lambda rng: self._init_boxed(rng, input_length, target_length)
    return jax.eval_shape(init, jax.random.key(0))

  def init_params(self, rng, input_length: int, target_length: int):
    """Freshly initialised float32 params (plain arrays); jit with out_shardings to shard."""
    return nn.unbox(self._init_boxed(rng, input_length, target_length))

  def abstract_params(self, input_length: int = 1, target_length: int = 1):
    """ShapeDtypeStructs of the params, without allocating anything (lengths do not matter)."""
    return nn.unbox(self._abstract_boxed(input_length, target_length))

  def param_logical_axes(self, input_length: int = 1, target_length: int = 1):
    """The params' logical axis names as a PartitionSpec tree (same structure as the params)."""
    return nn.get_partition_spec(self._abstract_boxed(input_length, target_length))

  # ---- training ------------------------------------------------------------------------------

  def logits(self, params, batch, dropout_rng=None):
    """float32 logits [batch, target_length, vocab]; dropout is on iff dropout_rng is given."""
    inputs = {k: batch[k] for k in _MODEL_INPUTS if batch.get(k) is not None}
    enable_dropout = dropout_rng is not None
    rngs = {"dropout": dropout_rng} if enable_dropout else None
    return self.module.apply({"params": params}, **inputs, enable_dropout=enable_dropout, rngs=rngs)

  def loss_fn(
    self,
    params,
    batch,
    dropout_rng=None,
    z_loss: float = 1e-4,
    loss_normalizing_factor: None | str | float = None,
  ):
    """Weighted cross-entropy with z-loss over the target tokens: returns (loss, aux).

    loss_normalizing_factor: what the summed loss is divided by (see `loss_normalizer`).
    aux holds sums (never means) so that microbatches can be accumulated by adding them:
    `loss`, `z_loss`, `cross_ent_loss` (loss without the z part), `weight_sum`, `correct`
    (weighted count of argmax hits, for accuracy) and `num_examples`.
    """
    logits = self.logits(params, batch, dropout_rng)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else weights
    weights = weights.astype(jnp.float32)
    token_loss, token_z = cross_entropy_with_z_loss(logits, targets, weights, z_loss)
    loss_sum, z_sum, weight_sum = token_loss.sum(), token_z.sum(), weights.sum()
    correct = ((jnp.argmax(logits, -1) == targets) * weights).sum()
    aux = {
      "loss": loss_sum,
      "z_loss": z_sum,
      "cross_ent_loss": loss_sum - z_sum,
      "weight_sum": weight_sum,
      "correct": correct,
      "num_examples": jnp.asarray(targets.shape[0], jnp.float32),
    }
    if loss_normalizing_factor is None:
      return loss_sum, aux
    return loss_sum / loss_normalizer(loss_normalizing_factor, weights), aux

  # ---- inference -----------------------------------------------------------------------------

  def score_batch(self, params, batch):
    """Log-likelihood of each example's targets (sum over weighted tokens): [batch] float32."""
    logits = self.logits(params, batch)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else weights
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return (token * weights.astype(jnp.float32)).sum(-1)

  def greedy_decode(self, params, encoder_input_tokens, max_decode_length: int):
    """Greedy decoding with the key/value cache: [batch, max_decode_length] token ids.

    Each row stops at its first EOS (kept); everything after it is PAD. Jit-friendly.
    """
    module, batch = self.module, encoder_input_tokens.shape[0]
    variables = {"params": params}
    encoded = module.apply(variables, encoder_input_tokens, method=Transformer.encode)
    # A first call on a full-length dummy sizes the cache; its output is discarded.
    _, state = module.apply(
      variables,
      encoded,
      encoder_input_tokens,
      jnp.zeros((batch, max_decode_length), jnp.int32),
      decode=True,
      mutable=["cache"],
      method=Transformer.decode,
    )

    def step(carry, _):
      cache, token, done = carry
      logits, state = module.apply(
        {"params": params, "cache": cache},
        encoded,
        encoder_input_tokens,
        token,
        decode=True,
        mutable=["cache"],
        method=Transformer.decode,
      )
      next_token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)  # [batch]
      next_token = jnp.where(done, PAD_ID, next_token)
      done = done | (next_token == EOS_ID)
      return (state["cache"], next_token[:, None], done), next_token

    start = jnp.full((batch, 1), DECODER_START_ID, jnp.int32)
    init = (state["cache"], start, jnp.zeros((batch,), bool))
    _, tokens = jax.lax.scan(step, init, None, length=max_decode_length)
    return tokens.T  # [batch, max_decode_length]


@functools.cache
def num_params(cfg: T5Config) -> int:
  """Exact parameter count, from the shapes of the Flax init (nothing is allocated)."""
  abstract = EncoderDecoderModel(cfg).abstract_params(input_length=1, target_length=1)
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(abstract))


def weight_bytes(cfg: T5Config, bytes_per_param: int) -> int:
  """Memory of the weights alone at `bytes_per_param` (4: float32, 2: bfloat16)."""
  return num_params(cfg) * bytes_per_param


@functools.cache
def jitted_greedy_decode(cfg):
  """One compiled decode per model config, shared by every Decoder of this process."""
  return jax.jit(EncoderDecoderModel(cfg).greedy_decode, static_argnums=2)


def greedy_generate(
  decode,
  params,
  vocab_size: int,
  input_ids: list[list[int]],
  max_decode_length: int,
  input_length: int | None = None,
) -> list[list[int]]:
  """The decoding core of `infer` and of fine-tuning's decoding eval (decode_eval.py).

  `decode` is a jitted `EncoderDecoderModel.greedy_decode`. Inputs are padded into one batch,
  to `input_length` when given (a fixed shape compiles once), else to the longest input.
  """
  for ids in input_ids:
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
      raise UserError(f"token id {bad[0]} is outside the model's vocab_size {vocab_size}")
  length = input_length or max(len(ids) for ids in input_ids)
  batch = np.full((len(input_ids), length), PAD_ID, np.int32)
  for row, ids in enumerate(input_ids):
    batch[row, : len(ids)] = ids[:length]
  tokens = np.asarray(decode(params, batch, max_decode_length))
  outputs = []
  for row in tokens.tolist():
    end = row.index(EOS_ID) + 1 if EOS_ID in row else len(row)
    outputs.append(row[:end])
  return outputs
