"""Tasks the logical-shard streams read directly (streams.py): `StreamTask`.

A StreamTask is a seqio.Task (inspect_data, the tokenized cache and any seqio user read it the
usual way) that also says how one split is read as record files, parsed, tokenized and turned
into examples, which is what lets all of a process's logical shards run in one pipeline with
positions that are numbers. Our span-corruption tasks and `seq2seq_files` are StreamTasks; other
tasks and mixtures are read with one seqio pipeline per logical shard (seqio_shards.py).

Its source provides `records(split) -> (files, "lines" | "tfrecord", parse)`, where
`parse(records, file_index) -> ({feature: 1-D text}, quality counters)` reads a group of records.
"""

from collections.abc import Callable

import seqio
import tensorflow as tf

from t5x_lite.data import streams, tokenized_cache


class StreamTask(seqio.Task):
  """A seqio.Task whose split `stream_spec` describes for streams.py.

  `make_examples(sequence_length, vocab_size)` returns the per-group function
  ({name: ragged tokens}, seeds) -> {"inputs", "targets"} and has a `num_seeds` attribute
  (seeds per group); `setting` names the gin binding of the task's files, for messages.
  """

  def __init__(self, name: str, *, make_examples: Callable, num_seeds: int, setting: str, **kw):
    super().__init__(name, **kw)
    self._make_examples = make_examples
    self._num_seeds = num_seeds
    self._setting = setting

  @property
  def vocabulary(self) -> seqio.Vocabulary:
    return self.output_features["targets"].vocabulary

  def stream_spec(self, split: str, sequence_length: dict) -> streams.StreamSpec:
    """How `split` is read (files first: a missing file is named before the vocabulary loads)."""
    cache_dir = tokenized_cache.tokenized_cache_config()
    if cache_dir:
      tokenized_cache.use_cache(self, cache_dir, split)
      files = tokenized_cache.cache_files(self, cache_dir, split)
      record_format, parse = "tfrecord", _parse_cached_tokens
    else:
      files, record_format, parse = self.source.records(split)
      parse = self._tokenized(parse)
    return streams.StreamSpec(
      files=tuple(files),
      record_format=record_format,
      parse=parse,
      make_examples=self._make_examples(sequence_length, self.vocabulary.vocab_size),
      num_seeds=self._num_seeds,
      setting=self._setting,
      format_hint=getattr(self.source, "format_hint", "one document per line"),
    )

  def _tokenized(self, parse_records: Callable) -> Callable:
    vocabulary = self.vocabulary
    # The tokenizer's resource is made here, eagerly, and shared: made inside the traced parse
    # function, every logical shard's instance of it would load the SentencePiece model again.
    getattr(vocabulary, "tf_tokenizer", None)

    def parse(records, file_index):
      texts, counters = parse_records(records, file_index)
      # The documents' text is the `targets` feature (seqio.preprocessors.rekey in the Task).
      texts = {"targets" if k == "text" else k: v for k, v in texts.items()}
      return {k: vocabulary.encode_tf(v) for k, v in texts.items()}, counters

    return parse


def _parse_cached_tokens(records, file_index):
  """Records of a tokenized cache (tokenized_cache.py) -> token ids; empty ones are skipped."""
  del file_index
  tokens = tf.io.parse_example(records, {"targets": tf.io.RaggedFeature(tf.int64)})["targets"]
  keep = tokens.row_lengths() > 0
  counters = {
    "records": tf.size(records, out_type=tf.int64),
    "empty": tf.reduce_sum(tf.cast(~keep, tf.int64)),
  }
  return {"targets": tf.ragged.boolean_mask(tokens, keep)}, counters


def examples_as_read(sequence_length, vocab_size):
  """make_examples of a task whose records are its examples (seq2seq files): no randomness."""
  del sequence_length, vocab_size
  return lambda features, seeds: {"inputs": features["inputs"], "targets": features["targets"]}


def supports_streams(provider) -> bool:
  return isinstance(provider, StreamTask)
