"""Span corruption (the T5 pretraining objective) as seqio-compatible TF preprocessors.

Pipeline per task (after `seqio.preprocessors.tokenize` of the `targets` text):
  groups of documents -> a random chunk of each, concatenated and cut into raw-length segments
  -> span corruption of the whole group at once -> append_eos_after_trim.
Every random choice uses stateless ops seeded by `seqio.map_over_dataset(num_seeds=...)`, so a
dataset is a pure function of the seqio seed (and tf.data iterator checkpoints restore exactly).
"""

import functools

import seqio
import tensorflow as tf

from t5x_lite.data import stream_tasks

# The length arithmetic needs no TF (synthetic and ready-made data use it too).
from t5x_lite.data.span_lengths import (  # noqa: F401
  _num_noise,
  corrupted_lengths,
  raw_length_for,
  span_corruption_config,
)

# Longest chunk kept from one document (as in T5's C4 task); longer documents contribute a
# random window of this many tokens per epoch.
MAX_CHUNK_TOKENS = 65536
# Documents concatenated per group before splitting into raw segments.
CONCAT_GROUP_SIZE = 128


def _noise_counts(lengths, noise_density: float, mean_noise_span_length: float):
  """Per-row (noise tokens, noise spans) for int32 `lengths` (already >= 2), as `_num_noise`."""
  lengthf = tf.cast(lengths, tf.float32)
  num_noise = tf.cast(tf.round(lengthf * noise_density), tf.int32)
  num_noise = tf.clip_by_value(num_noise, 1, lengths - 1)
  num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length), tf.int32)
  # Every span needs at least one token on both sides (only matters at extreme densities).
  num_spans = tf.clip_by_value(num_spans, 1, tf.minimum(num_noise, lengths - num_noise))
  return num_noise, num_spans


def _random_cuts(num_items, num_segments, width, seed):
  """Bool [rows, width]: column g is True where part boundary falls before item g.

  Per row, exactly num_segments-1 distinct columns among 1..num_items-1, uniformly at random, so
  the items split into num_segments non-empty parts.
  """
  rows = tf.shape(num_items)[0]
  width = tf.maximum(width, 1)
  cols = tf.range(width)[tf.newaxis, :]
  # Random keys made distinct by the column, so the top num_segments-1 are exactly that many.
  keys = (
    tf.random.stateless_uniform(
      [rows, width], seed, minval=0, maxval=tf.maximum((2**31 - 1) // width, 1), dtype=tf.int32
    )
    * width
    + cols
  )
  valid = tf.logical_and(cols >= 1, cols < num_items[:, tf.newaxis])
  keys = tf.where(valid, keys, -1)
  need = num_segments - 1
  # top_k with the largest count needed (a partial sort) is much cheaper than a full sort.
  ranked = tf.math.top_k(keys, k=tf.maximum(tf.reduce_max(need), 1), sorted=True).values
  threshold = tf.gather(ranked, tf.maximum(need - 1, 0), axis=1, batch_dims=1)
  return tf.logical_and(
    tf.logical_and(valid, keys >= threshold[:, tf.newaxis]), (need > 0)[:, tf.newaxis]
  )


def batched_noise_mask(lengths, width, noise_density: float, mean_noise_span_length: float, seeds):
  """Bool [rows, width] noise masks, one per row of `lengths` (False past a row's length).

  Each row alternates non-noise / noise spans, starting with non-noise, with the counts of
  `_num_noise`; noise span lengths and non-noise span lengths are uniformly random splits.
  `width` must be at least max(max(lengths), 2).
  """
  lengths = tf.cast(lengths, tf.int32)
  orig_lengths = lengths
  lengths = tf.maximum(lengths, 2)  # A single token is kept as non-noise (cut below).
  num_noise, num_spans = _noise_counts(lengths, noise_density, mean_noise_span_length)
  num_nonnoise = lengths - num_noise
  rows = tf.shape(lengths)[0]
  # Gaps only exist below the item counts, so the cut matrices need only that many columns.
  noise_cuts = tf.where(_random_cuts(num_noise, num_spans, tf.reduce_max(num_noise), seeds[0]))
  nonnoise_cuts = tf.where(
    _random_cuts(num_nonnoise, num_spans, tf.reduce_max(num_nonnoise), seeds[1])
  )
  # Both have num_spans-1 cuts per row, listed in row-major order, so they pair up: the s-th
  # pair is where non-noise span s ends (E[s], counted in non-noise tokens) and where noise
  # span s+1 starts (B[s+1], counted in noise tokens). With E[S-1] = num_nonnoise and B[0] = 0,
  # noise span s covers [E[s] + B[s], E[s] + B[s+1]) of the segment.
  row_ids = tf.cast(noise_cuts[:, 0], tf.int32)
  ends = tf.cast(nonnoise_cuts[:, 1], tf.int32)
  starts = tf.cast(noise_cuts[:, 1], tf.int32)
  # E[s+1] for each pair: the next pair's end in the same row, else num_nonnoise.
  next_same_row = tf.concat([tf.equal(row_ids[1:], row_ids[:-1]), [False]], axis=0)
  next_ends = tf.where(
    next_same_row, tf.concat([ends[1:], [0]], axis=0), tf.gather(num_nonnoise, row_ids)
  )
  # E[0] per row: the first non-noise cut, or num_nonnoise when there is a single span.
  # (Rows without cuts get the dtype's maximum from the segment min.)
  first_ends = tf.minimum(tf.math.unsorted_segment_min(ends, row_ids, rows), num_nonnoise)
  row_range = tf.range(rows)
  indices = tf.concat(
    [
      tf.stack([row_range, first_ends], axis=1),  # noise span 0 begins
      tf.stack([row_ids, next_ends + starts], axis=1),  # noise span s+1 begins
      tf.stack([row_ids, ends + starts], axis=1),
    ],  # noise span s ends
    axis=0,
  )
  updates = tf.concat([tf.ones_like(row_range), tf.ones_like(ends), -tf.ones_like(ends)], axis=0)
  deltas = tf.scatter_nd(indices, updates, tf.stack([rows, width]))
  inside = tf.range(width)[tf.newaxis, :] < orig_lengths[:, tf.newaxis]
  return tf.logical_and(tf.cumsum(deltas, axis=1) > 0, inside)


def noise_mask(length, noise_density: float, mean_noise_span_length: float, seeds):
  """Boolean [length] mask: alternating non-noise / noise spans, starting with non-noise.

  Counts follow `_num_noise`: round(length*density) noise tokens in round(noise/mean) spans.
  """
  length = tf.cast(length, tf.int32)
  mask = batched_noise_mask(
    length[tf.newaxis], tf.maximum(length, 2), noise_density, mean_noise_span_length, seeds
  )
  return mask[0, :length]


def _replace_spans_with_sentinels(tokens, mask, inside, first_sentinel):
  """Dense [rows, width] -> ragged: each run of masked tokens becomes one sentinel per row,
  first_sentinel, first_sentinel-1, ...; positions outside `inside` are dropped."""
  prev = tf.pad(mask[:, :-1], [[0, 0], [1, 0]])
  starts = tf.logical_and(mask, tf.logical_not(prev))
  sentinels = first_sentinel + 1 - tf.cumsum(tf.cast(starts, tokens.dtype), axis=1)
  tokens = tf.where(starts, sentinels, tokens)
  keep = tf.logical_and(inside, tf.logical_not(tf.logical_and(mask, prev)))
  return tf.ragged.boolean_mask(tokens, keep)


def span_corrupt_batch(
  tokens: tf.RaggedTensor,
  seeds,
  vocab_size: int,
  noise_density: float,
  mean_noise_span_length: float,
):
  """Ragged (inputs, targets) for a ragged [rows, None] batch of segments, all at once."""
  lengths = tf.cast(tokens.row_lengths(), tf.int32)
  dense = tokens.to_tensor()
  width = tf.shape(dense)[1]
  mask_width = tf.maximum(width, 2)
  dense = tf.pad(dense, [[0, 0], [0, mask_width - width]])
  mask = batched_noise_mask(lengths, mask_width, noise_density, mean_noise_span_length, seeds)
  inside = tf.range(mask_width)[tf.newaxis, :] < lengths[:, tf.newaxis]
  first_sentinel = tf.cast(vocab_size - 1, dense.dtype)
  inputs = _replace_spans_with_sentinels(dense, mask, inside, first_sentinel)
  targets = _replace_spans_with_sentinels(
    dense, tf.logical_and(inside, tf.logical_not(mask)), inside, first_sentinel
  )
  return inputs, targets


def span_corrupt_fn(
  tokens, seeds, vocab_size: int, noise_density: float, mean_noise_span_length: float
):
  """(inputs, targets) for one segment; extra_id_0 is `vocab_size - 1`."""
  inputs, targets = span_corrupt_batch(
    tf.RaggedTensor.from_tensor(tokens[tf.newaxis]),
    seeds,
    vocab_size,
    noise_density,
    mean_noise_span_length,
  )
  return inputs[0], targets[0]


def span_corrupt(ds, output_features, noise_density, mean_noise_span_length):
  """Maps ragged [segments, None] batches of raw segments to span-corrupted `inputs` /
  `targets` examples (no EOS yet), one vectorised graph per batch, then unbatches."""
  vocab_size = output_features["targets"].vocabulary.vocab_size

  @seqio.map_over_dataset(num_seeds=2)
  def corrupt(segments, seeds):
    inputs, targets = span_corrupt_batch(
      segments, seeds, vocab_size, noise_density, mean_noise_span_length
    )
    return {"inputs": inputs, "targets": targets}

  return corrupt(ds).unbatch()


def span_corruption(dataset: tf.data.Dataset, sequence_length, output_features) -> tf.data.Dataset:
  """seqio preprocessor: tokenized documents in `targets` -> span-corrupted examples (no EOS).

  Follow it with `seqio.preprocessors.append_eos_after_trim`. Hyper-parameters come from the gin
  configurable `span_corruption_config` when the dataset is built.
  """
  noise_density, mean_span = span_corruption_config()
  raw_length = raw_length_for(
    sequence_length["inputs"], sequence_length["targets"], noise_density, mean_span
  )
  # Chunk selection, concatenation and splitting run once per group of documents, and each
  # group's segments are corrupted as one ragged batch: per-op overhead is paid per group.
  ds = dataset.map(lambda x: x["targets"]).ragged_batch(CONCAT_GROUP_SIZE)
  ds = _chunk_and_split_groups(ds, raw_length=raw_length)
  return span_corrupt(ds, output_features, noise_density, mean_span)


@seqio.map_over_dataset(num_seeds=1)
def _chunk_and_split_groups(docs, seed, raw_length: int, max_length: int = MAX_CHUNK_TOKENS):
  return chunk_and_split(docs, seed, raw_length, max_length)


def chunk_and_split(docs, seed, raw_length: int, max_length: int = MAX_CHUNK_TOKENS):
  """Ragged [documents, None] -> ragged [segments, None]: a random chunk of at most `max_length`
  tokens of each document (the whole document if shorter), concatenated, cut every `raw_length`."""
  n = docs.row_lengths()
  num_chunks = tf.maximum((n + max_length - 1) // max_length, 1)
  u = tf.random.stateless_uniform(tf.shape(n), seed, dtype=tf.float64)
  chunk = tf.minimum(
    tf.cast(tf.floor(u * tf.cast(num_chunks, tf.float64)), tf.int64), num_chunks - 1
  )
  begin = docs.row_starts() + max_length * chunk
  end = docs.row_starts() + tf.minimum(n, max_length * (chunk + 1))
  tokens = tf.gather(docs.flat_values, tf.ragged.range(begin, end).flat_values)
  total = tf.size(tokens, out_type=tf.int64)
  num_segments = (total + raw_length - 1) // raw_length
  splits = tf.minimum(tf.range(num_segments + 1) * raw_length, total)
  return tf.RaggedTensor.from_row_splits(tokens, splits)


class SpanCorruptionExamples:
  """Span corruption of one group of tokenized documents at once, with explicit seeds: what the
  logical-shard streams (streams.py) call per group. Same ops as the seqio preprocessor."""

  num_seeds = 3

  def __init__(self, sequence_length, vocab_size: int):
    self.noise_density, self.mean_span = span_corruption_config()
    self.raw_length = raw_length_for(
      sequence_length["inputs"], sequence_length["targets"], self.noise_density, self.mean_span
    )
    self.vocab_size = vocab_size

  def __call__(self, features, seeds):
    """{"targets": ragged [documents, None]}, seeds [3, 2] -> ragged "inputs" / "targets"."""
    segments = chunk_and_split(features["targets"], seeds[0], self.raw_length)
    inputs, targets = span_corrupt_batch(
      segments, [seeds[1], seeds[2]], self.vocab_size, self.noise_density, self.mean_span
    )
    return {"inputs": inputs, "targets": targets}


def span_corruption_task(
  name: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary
) -> seqio.Task:
  """A T5-style span-corruption Task over a source of {"text": ...} documents."""
  return stream_tasks.StreamTask(
    name,
    make_examples=SpanCorruptionExamples,
    num_seeds=SpanCorruptionExamples.num_seeds,
    setting=getattr(source, "setting", "the task's source"),
    source=source,
    preprocessors=[
      functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
      seqio.preprocessors.tokenize,
      # Everything after this is redone each epoch (new chunks and masks).
      seqio.CacheDatasetPlaceholder(),
      span_corruption,
      seqio.preprocessors.append_eos_after_trim,
    ],
    output_features={
      "inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary, add_eos=True),
    },
    metric_fns=[],
  )
