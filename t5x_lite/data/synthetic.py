"""`synthetic`: random span-corruption batches for throughput and memory checks, no files, no TF.

  --gin.MIXTURE_OR_TASK_NAME="'synthetic'"     (MaxText's `dataset_type=synthetic`)

Each example has the layout a span-corrupted C4 example has at the run's feature lengths: random
pieces in which noise spans are replaced by sentinels (<extra_id_0> = vocabulary size - 1, then
descending) and EOS, targets of sentinel + hidden span ... + EOS, loss weights on every target
token. Noise density and mean span length are span_corruption_config's. The tokens are a pure
function of (seed, global example index): a resumed run reads exactly what an uninterrupted one
does, on any process count. Lengths that span corruption cannot fill (too short) give random
inputs and targets ending in EOS.
"""

import gin
import numpy as np

from t5x_lite.data import indexed, span_lengths
from t5x_lite.errors import UserError
from t5x_lite.tokens import EOS_ID, EXTRA_IDS

TASK_NAME = "synthetic"
# T5's C4 vocabulary: 32000 SentencePiece pieces + 100 extra ids.
DEFAULT_VOCAB_SIZE = 32100
# The evaluation batches are drawn from another stream than the training ones.
_EVAL_STREAM = 1


@gin.configurable("synthetic")
def synthetic_config(vocab_size: int | None = None) -> int | None:
  """Ids the synthetic vocabulary has (pieces + 100 extra ids); None: 32100 (T5's C4 vocabulary),
  or the model's vocab_size when that is smaller."""
  return vocab_size


def vocab_size(model_vocab_size: int | None = None) -> int:
  configured = synthetic_config()
  if configured is None:
    return min(DEFAULT_VOCAB_SIZE, model_vocab_size or DEFAULT_VOCAB_SIZE)
  if isinstance(configured, bool) or not isinstance(configured, int) or configured < EXTRA_IDS + 4:
    raise UserError(
      f"synthetic.vocab_size must be an integer >= {EXTRA_IDS + 4}, got {configured!r}"
    )
  return configured


def _noise_mask(
  rng: np.random.Generator, length: int, num_noise: int, num_spans: int
) -> np.ndarray:
  """Alternating non-noise / noise spans (non-noise first), `num_spans` of each, random lengths."""

  def cuts(total):  # `num_spans` positive lengths summing to `total`
    points = np.sort(rng.choice(np.arange(1, total), num_spans - 1, replace=False))
    return np.diff(np.concatenate([[0], points, [total]]))

  spans = np.stack([cuts(length - num_noise), cuts(num_noise)], axis=1).reshape(-1)
  return np.repeat(np.tile([False, True], num_spans), spans)


def example(
  seed: int, stream: int, index: int, lengths: dict, num_ids: int, density: float, mean_span: float
) -> dict[str, np.ndarray]:
  """One model-ready example (unpadded lengths fill the features exactly or nearly)."""
  rng = np.random.default_rng([seed, stream, index])
  inputs_length, targets_length = lengths["inputs"], lengths["targets"]
  pieces = num_ids - EXTRA_IDS  # ids [3, pieces) are ordinary pieces
  try:
    raw = span_lengths.raw_length_for(inputs_length, targets_length, density, mean_span)
  except ValueError:
    raw = None
  if raw is None or raw < 2:
    inputs = np.append(rng.integers(3, pieces, inputs_length - 1), EOS_ID)
    targets = np.append(rng.integers(3, pieces, targets_length - 1), EOS_ID)
  else:
    tokens = rng.integers(3, pieces, raw)
    num_noise, num_spans = span_lengths._num_noise(raw, density, mean_span)
    mask = _noise_mask(rng, raw, num_noise, num_spans)
    starts = mask & ~np.concatenate([[False], mask[:-1]])  # the first token of each noise span
    sentinels = num_ids - 1 - (np.cumsum(starts) - 1)
    inputs = np.append(np.where(starts, sentinels, tokens)[~mask | starts], EOS_ID)
    # Targets: each span's sentinel followed by the tokens it hides, then EOS.
    targets = np.concatenate(
      [np.concatenate([[sentinels[i]], tokens[i : i + n]]) for i, n in _spans(mask)] + [[EOS_ID]]
    )
  return _model_ready(inputs, targets, inputs_length, targets_length)


def _spans(mask: np.ndarray):
  """(start, length) of each run of True in `mask`."""
  edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
  return list(zip(edges[::2], edges[1::2] - edges[::2]))


def _model_ready(inputs, targets, inputs_length: int, targets_length: int) -> dict:
  def padded(x, n):
    out = np.zeros(n, np.int32)
    out[: len(x)] = x[:n]
    return out

  decoder_target = padded(targets, targets_length)
  return {
    "encoder_input_tokens": padded(inputs, inputs_length),
    "decoder_target_tokens": decoder_target,
    "decoder_input_tokens": np.concatenate([[0], decoder_target[:-1]]).astype(np.int32),
    "decoder_loss_weights": (decoder_target > 0).astype(np.int32),
  }


def _reader(lengths: dict, seed: int, num_ids: int, stream: int):
  """read(first, count): the examples [first, first + count) of one synthetic stream."""
  density, mean_span = span_lengths.span_corruption_config()

  def read(first: int, count: int) -> dict[str, np.ndarray]:
    rows = [
      example(seed, stream, i, lengths, num_ids, density, mean_span)
      for i in range(first, first + count)
    ]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  return read


def train_batches(
  lengths: dict, batch_size: int, rows: range, seed: int, num_ids: int, process_index: int = 0
) -> indexed.IndexedBatches:
  read = _reader(lengths, seed, num_ids, stream=0)
  return indexed.IndexedBatches(read, batch_size, rows, process_index, "synthetic")


def eval_batches(lengths: dict, batch_size: int, rows: range, seed: int, num_ids: int, steps: int):
  read = _reader(lengths, seed, num_ids, stream=_EVAL_STREAM)
  return indexed.IndexedEvalBatches(read, batch_size, rows, steps)
