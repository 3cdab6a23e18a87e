"""Span corruption (the T5 pretraining objective) as seqio-compatible TF preprocessors.

Pipeline per task (after `seqio.preprocessors.tokenize` of the `targets` text):
  select_random_chunk -> concat_and_split -> span_corrupt -> append_eos_after_trim.
Every random choice uses stateless ops seeded by `seqio.map_over_dataset(num_seeds=...)`, so a
dataset is a pure function of the seqio seed (and tf.data iterator checkpoints restore exactly).
"""

import functools

import gin
import seqio
import tensorflow as tf

# Longest chunk kept from one document (as in T5's C4 task); longer documents contribute a
# random window of this many tokens per epoch.
MAX_CHUNK_TOKENS = 65536
# Documents concatenated per group before splitting into raw segments.
CONCAT_GROUP_SIZE = 128


@gin.configurable
def span_corruption_config(noise_density: float = 0.15, mean_noise_span_length: float = 3.0):
  """The two hyper-parameters of span corruption; bind them in gin to change the objective."""
  if not 0.0 < noise_density < 1.0:
    raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
  if mean_noise_span_length < 1.0:
    raise ValueError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length}")
  return noise_density, mean_noise_span_length


def _num_noise(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
  """(noise tokens, noise spans) for a segment of `length` tokens, exactly as the masker computes them."""
  length = max(length, 2)
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  num_spans = int(round(num_noise / mean_noise_span_length))
  return num_noise, min(max(num_spans, 1), num_noise, length - num_noise)


def corrupted_lengths(raw_length: int, noise_density: float = 0.15,
                      mean_noise_span_length: float = 3.0) -> tuple[int, int]:
  """(inputs, targets) lengths, EOS included, that a raw segment of `raw_length` tokens becomes."""
  num_noise, num_spans = _num_noise(raw_length, noise_density, mean_noise_span_length)
  # Inputs: kept tokens + one sentinel per noise span + EOS; targets: noise + sentinels + EOS.
  return raw_length - num_noise + num_spans + 1, num_noise + num_spans + 1


def raw_length_for(inputs_length: int, targets_length: int, noise_density: float = 0.15,
                   mean_noise_span_length: float = 3.0) -> int:
  """The longest raw segment whose corrupted inputs and targets fit the feature lengths.

  For inputs 512 / targets 114 at density 0.15 and mean span 3.0 this is 568.
  """
  def fits(n):
    i, t = corrupted_lengths(n, noise_density, mean_noise_span_length)
    return i <= inputs_length and t <= targets_length

  if not fits(1):
    raise ValueError(f"feature lengths inputs={inputs_length}, targets={targets_length} are too short "
                     "for span corruption")
  n = 1
  while fits(n + 1):
    n += 1
  return n


@seqio.map_over_dataset(num_seeds=1)
def select_random_chunk(x, seed, max_length: int = MAX_CHUNK_TOKENS):
  """Keeps a random window of at most `max_length` tokens of `targets` (whole doc if shorter)."""
  tokens = x["targets"]
  n = tf.size(tokens)
  num_chunks = (n + max_length - 1) // max_length
  start = max_length * tf.random.stateless_uniform([], seed, 0, tf.maximum(num_chunks, 1),
                                                   dtype=tf.int32)
  return {"targets": tokens[start:start + max_length]}


def concat_and_split(ds: tf.data.Dataset, raw_length: int,
                     group_size: int = CONCAT_GROUP_SIZE) -> tf.data.Dataset:
  """Concatenates groups of documents and cuts them into segments of `raw_length` tokens.

  No separator goes between documents (as in T5); the last segment of a group may be shorter.
  """
  ds = ds.filter(lambda x: tf.size(x["targets"]) > 0)
  ds = ds.map(lambda x: x["targets"]).ragged_batch(group_size)

  def split(group):
    tokens = group.flat_values
    n = tf.size(tokens, out_type=tf.int64)
    num_segments = (n + raw_length - 1) // raw_length
    splits = tf.minimum(tf.range(num_segments + 1) * raw_length, n)
    return tf.RaggedTensor.from_row_splits(tokens, splits)

  ds = ds.map(split, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
  return ds.map(lambda t: {"targets": t})


def _random_segmentation(num_items, num_segments, seed):
  """Lengths of a uniformly random split of `num_items` into `num_segments` non-empty parts."""
  # Choose num_segments-1 distinct cut points among the num_items-1 gaps.
  scores = tf.random.stateless_uniform([num_items - 1], seed)
  cuts = tf.sort(tf.math.top_k(scores, k=num_segments - 1).indices + 1)
  bounds = tf.concat([[0], cuts, [num_items]], axis=0)
  return bounds[1:] - bounds[:-1]


def noise_mask(length, noise_density: float, mean_noise_span_length: float, seeds):
  """Boolean [length] mask: alternating non-noise / noise spans, starting with non-noise.

  Counts follow `_num_noise`: round(length*density) noise tokens in round(noise/mean) spans.
  """
  orig_length = length
  length = tf.maximum(length, 2)  # A single token is kept as non-noise (cut below).
  lengthf = tf.cast(length, tf.float32)
  num_noise = tf.cast(tf.round(lengthf * noise_density), tf.int32)
  num_noise = tf.clip_by_value(num_noise, 1, length - 1)
  num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length), tf.int32)
  num_nonnoise = length - num_noise
  # Every span needs at least one token on both sides (only matters at extreme densities).
  num_spans = tf.clip_by_value(num_spans, 1, tf.minimum(num_noise, num_nonnoise))
  noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])
  nonnoise_lengths = _random_segmentation(num_nonnoise, num_spans, seeds[1])
  span_lengths = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1])
  span_index = tf.repeat(tf.range(2 * num_spans), span_lengths)
  return tf.equal(span_index % 2, 1)[:orig_length]


def _replace_spans_with_sentinels(tokens, mask, first_sentinel):
  """Each run of masked tokens becomes one sentinel: first_sentinel, first_sentinel-1, ..."""
  prev = tf.concat([[False], mask[:-1]], axis=0)
  starts = tf.logical_and(mask, tf.logical_not(prev))
  sentinels = first_sentinel + 1 - tf.cumsum(tf.cast(starts, tokens.dtype))
  tokens = tf.where(starts, sentinels, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(tf.logical_and(mask, prev)))


def span_corrupt_fn(tokens, seeds, vocab_size: int, noise_density: float,
                    mean_noise_span_length: float):
  """(inputs, targets) for one segment; extra_id_0 is `vocab_size - 1`."""
  mask = noise_mask(tf.size(tokens), noise_density, mean_noise_span_length, seeds)
  first_sentinel = tf.cast(vocab_size - 1, tokens.dtype)
  inputs = _replace_spans_with_sentinels(tokens, mask, first_sentinel)
  targets = _replace_spans_with_sentinels(tokens, tf.logical_not(mask), first_sentinel)
  return inputs, targets


def span_corrupt(ds, output_features, noise_density, mean_noise_span_length):
  """Maps raw `targets` segments to span-corrupted `inputs` / `targets` (no EOS yet)."""
  vocab_size = output_features["targets"].vocabulary.vocab_size

  @seqio.map_over_dataset(num_seeds=2)
  def corrupt(x, seeds):
    inputs, targets = span_corrupt_fn(x["targets"], seeds, vocab_size, noise_density,
                                      mean_noise_span_length)
    return {"inputs": inputs, "targets": targets}

  return corrupt(ds)


def span_corruption(dataset: tf.data.Dataset, sequence_length, output_features) -> tf.data.Dataset:
  """seqio preprocessor: tokenized documents in `targets` -> span-corrupted examples (no EOS).

  Follow it with `seqio.preprocessors.append_eos_after_trim`. Hyper-parameters come from the gin
  configurable `span_corruption_config` when the dataset is built.
  """
  noise_density, mean_span = span_corruption_config()
  raw_length = raw_length_for(sequence_length["inputs"], sequence_length["targets"],
                              noise_density, mean_span)
  ds = select_random_chunk(dataset)
  ds = concat_and_split(ds, raw_length)
  return span_corrupt(ds, output_features, noise_density, mean_span)


def span_corruption_task(name: str, source: seqio.DataSource,
                         vocabulary: seqio.Vocabulary) -> seqio.Task:
  """A T5-style span-corruption Task over a source of {"text": ...} documents."""
  return seqio.Task(
      name,
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
      metric_fns=[])
