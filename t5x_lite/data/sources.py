"""Data sources for span-corruption tasks: raw C4 JSON shards, TFDS C4, local text and JSONL.

Every source yields {"text": tf.string} documents with invalid UTF-8 replaced by U+FFFD and empty
documents removed. Reading is pure TF (no py_function), so iterator checkpoints work.
The gin-configurable `*_config` functions hold the locations; tasks call them when (re)built.
"""

from collections.abc import Callable, Mapping
import os

import gin
import numpy as np
import seqio
import tensorflow as tf

from t5x_lite.data import text_decoding
from t5x_lite.errors import UserError

SPLITS = ("train", "validation")


@gin.configurable("c4_tfds")
def c4_tfds_config(data_dir: str | None = None, version: str = "3.1.0"):
  """TFDS `c4/en` prepared under `data_dir` (local or gs://); None means TFDS's default dir."""
  return data_dir, version


@gin.configurable("c4_json")
def c4_json_config(data_dir: str | None = None):
  """Directory holding `c4-train.*-of-*.json.gz` and `c4-validation.*-of-*.json.gz`."""
  return data_dir


@gin.configurable("text_corpus")
def text_corpus_config(train_files: str | None = None, validation_files: str | None = None):
  """File patterns of plain-text corpora: one document per line (.gz files are decompressed)."""
  return {"train": train_files, "validation": validation_files}


@gin.configurable("jsonl_corpus")
def jsonl_corpus_config(
  train_files: str | None = None,
  validation_files: str | None = None,
  text_field: str = "text",
):
  """File patterns of JSON-lines corpora, the document text in `text_field`."""
  return {"train": train_files, "validation": validation_files}, text_field


# Lines are decoded in batches of this many: the string ops are vectorised, so their per-op cost
# is paid per batch rather than per document.
READ_BATCH = 256


def clean_texts(texts):
  """A 1-D batch of valid UTF-8 texts -> {"text": ...}: stripped, empty ones dropped."""
  texts = tf.strings.strip(texts)
  return {"text": tf.boolean_mask(texts, tf.strings.length(texts) > 0)}


def documents_of_lines(lines, json_field: str | None = None):
  """A 1-D batch of raw lines -> ({"text": the documents kept}, quality counters).

  Blank lines are separators; a line with a NUL byte is binary; a JSON line without a closed
  string in `json_field`, or that is not one whole object, is malformed; a document empty after
  stripping is empty. Those are skipped; invalid UTF-8 is replaced by U+FFFD and counted.
  """
  lines = tf.convert_to_tensor(lines)
  valid_lines = text_decoding.repair_invalid_utf8(lines)
  repaired = tf.not_equal(valid_lines, lines)
  blank = tf.equal(tf.strings.length(tf.strings.strip(valid_lines)), 0)
  binary = ~blank & tf.strings.regex_full_match(valid_lines, "(?s).*\\x00.*")
  if json_field:
    texts, found = text_decoding.json_string_fields_found(valid_lines, json_field)
    whole = tf.strings.regex_full_match(valid_lines, r"(?s)\s*\{.*\}\s*")
    malformed = ~blank & ~binary & ~(found & whole)
  else:
    texts, malformed = valid_lines, tf.zeros_like(blank)
  texts = tf.strings.strip(texts)
  empty = ~blank & ~binary & ~malformed & tf.equal(tf.strings.length(texts), 0)
  keep = ~(blank | binary | malformed | empty)
  counters = {
    "records": tf.size(lines, out_type=tf.int64),
    **{
      name: _count(mask)
      for name, mask in (
        ("blank", blank),
        ("binary", binary),
        ("malformed", malformed),
        ("empty", empty),
        ("invalid_utf8", repaired & keep),
      )
    },
  }
  return {"text": tf.boolean_mask(texts, keep)}, counters


def _count(mask) -> tf.Tensor:
  return tf.reduce_sum(tf.cast(mask, tf.int64))


def _lines(path):
  compression = tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")
  return tf.data.TextLineDataset(path, compression_type=compression)


def _read_batched(path, decode, shard_info: seqio.ShardInfo | None = None) -> tf.data.Dataset:
  """Documents of one file: `decode` maps a batch of lines to a batch of valid UTF-8 texts.

  With `shard_info`, only every num_shards-th line (from the index-th) is decoded.
  """
  lines = _lines(path)
  if shard_info is not None:
    lines = lines.shard(shard_info.num_shards, shard_info.index)
  return (
    lines.batch(READ_BATCH)
    .map(lambda lines: clean_texts(decode(lines)), num_parallel_calls=tf.data.AUTOTUNE)
    .unbatch()
  )


def text_lines_reader(path, shard_info=None) -> tf.data.Dataset:
  return _read_batched(path, text_decoding.repair_invalid_utf8, shard_info)


def jsonl_reader(text_field: str) -> Callable[..., tf.data.Dataset]:
  def read(path, shard_info=None):
    return _read_batched(
      path, lambda lines: text_decoding.json_string_fields(lines, text_field), shard_info
    )

  return read


class CorpusFiles(seqio.FileDataSource):
  """A FileDataSource whose missing or unconfigured file patterns are one-line user errors."""

  def __init__(
    self, split_to_pattern: Mapping[str, str | None], json_field: str | None, setting: str
  ):
    self.json_field = json_field  # None: plain text, one document per line.
    self.setting = setting  # The gin binding that names the files, for messages.
    self._patterns = dict(split_to_pattern)
    self._read = jsonl_reader(json_field) if json_field else text_lines_reader
    super().__init__(
      read_file_fn=self._read,
      split_to_filepattern={s: p or "" for s, p in split_to_pattern.items()},
    )

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True  # more shards than files: each file is split by lines (get_dataset)

  def get_dataset(
    self,
    split: str = "train",
    shuffle: bool = True,
    seed: int | None = None,
    shard_info: seqio.ShardInfo | None = None,
    **kwargs,
  ) -> tf.data.Dataset:
    files = self.list_shards(split)
    if shard_info is None or len(files) >= shard_info.num_shards:
      return super().get_dataset(split, shuffle, seed, shard_info, **kwargs)
    # Fewer files than shards (the trainer reads logical_shards.count streams; a small corpus has
    # a few files): every shard reads every file but decodes only its own lines, where seqio
    # would decode all documents in each shard and keep every num_shards-th.
    files_ds = tf.data.Dataset.from_tensor_slices(np.array(files, dtype=str))
    if shuffle:
      files_ds = files_ds.shuffle(len(files), seed=seed)
    return files_ds.interleave(
      lambda path: self._read(path, shard_info),
      cycle_length=self._cycle_length,
      block_length=self._block_length,
      num_parallel_calls=tf.data.AUTOTUNE,
    )

  def records(self, split: str):
    """(files, "lines", parse) for the logical-shard streams (stream_tasks.py)."""
    field = self.json_field
    return self.list_shards(split), "lines", lambda lines, _: documents_of_lines(lines, field)

  @property
  def format_hint(self) -> str:
    if self.json_field:
      return f"each line one JSON object with a string in its {self.json_field!r} field"
    return "plain text, one document per line"

  def list_shards(self, split: str):
    pattern = self._patterns.get(split)
    if not pattern:
      raise UserError(f"no files configured for split {split!r}: bind {self.setting}")
    files = seqio.utils.list_files(os.path.expanduser(pattern))
    if not files:
      raise UserError(f"no files match {pattern!r} (split {split!r}; set by {self.setting})")
    return files


def c4_json_source() -> CorpusFiles:
  data_dir = c4_json_config()
  patterns = {
    s: os.path.join(data_dir, f"c4-{s}.*-of-*.json.gz") if data_dir else None for s in SPLITS
  }
  return CorpusFiles(patterns, "text", "c4_json.data_dir")


def text_source() -> CorpusFiles:
  return CorpusFiles(
    text_corpus_config(), None, "text_corpus.train_files / text_corpus.validation_files"
  )


def jsonl_source() -> CorpusFiles:
  patterns, field = jsonl_corpus_config()
  return CorpusFiles(patterns, field, "jsonl_corpus.train_files / jsonl_corpus.validation_files")


class C4Tfds(seqio.TfdsDataSource):
  """TFDS `c4/en`, also readable as its record files by the logical-shard streams."""

  setting = "c4_tfds.data_dir / c4_tfds.version"
  format_hint = "TFDS c4/en examples with a 'text' feature"

  def records(self, split: str):
    """(the split's TFRecord files in TFDS's order, "tfrecord", parse), for the streams."""
    instructions = self.tfds_dataset.files(split)
    files = [os.fspath(i.filename) for i in instructions]
    if any(
      i.skip or (i.take not in (-1, None) and i.take != i.examples_in_shard) for i in instructions
    ):
      raise UserError(f"c4/en split {split!r} names part of a file; give a whole split")
    return files, "tfrecord", _c4_documents


def _c4_documents(records, file_index):
  """A group of serialized c4 examples -> ({"text": documents}, quality counters)."""
  del file_index
  texts = tf.io.parse_example(records, {"text": tf.io.FixedLenFeature([], tf.string)})["text"]
  return documents_of_lines(texts)


def c4_tfds_source() -> seqio.TfdsDataSource:
  data_dir, version = c4_tfds_config()
  return C4Tfds(tfds_name=f"c4/en:{version}", tfds_data_dir=data_dir, splits=SPLITS)


def check_c4_tfds() -> None:
  """Fails with one line naming the dataset, version and directory when it is not prepared."""
  data_dir, version = c4_tfds_config()
  if data_dir is None:
    import tensorflow_datasets as tfds

    data_dir = tfds.core.constants.DATA_DIR
  base = os.path.join(os.path.expanduser(data_dir), "c4", "en")
  if not tf.io.gfile.exists(os.path.join(base, version, "dataset_info.json")):
    found = sorted(tf.io.gfile.listdir(base)) if tf.io.gfile.isdir(base) else []
    found = [v.rstrip("/") for v in found if v[:1].isdigit()]
    raise UserError(
      f"TFDS dataset c4/en:{version} not found in {data_dir} (no {base}/{version}/dataset_info.json; "
      f"versions there: {', '.join(found) or 'none'}); bind c4_tfds.data_dir / c4_tfds.version "
      "or prepare it with `tfds build c4/en`"
    )


def document_stats(source: "CorpusFiles", split: str, max_documents: int | None = None):
  """Counts over the raw lines of a file source: documents kept, empty ones skipped, bad bytes.

  A scan of the files before training, for `inspect_data --stats`; the training streams count
  what they skip and repair as they read (quality.py).
  """
  field = source.json_field

  def line_stats(line):
    text = (
      text_decoding.json_string_field(line, field) if field else text_decoding.repair_utf8(line)
    )
    return text_decoding.count_invalid_utf8(line), tf.strings.length(tf.strings.strip(text))

  files = source.list_shards(split)
  ds = tf.data.Dataset.from_tensor_slices(files).flat_map(_lines).map(line_stats)
  if max_documents:
    ds = ds.take(max_documents)
  stats = {
    "documents": 0,
    "empty_skipped": 0,
    "documents_with_invalid_utf8": 0,
    "invalid_utf8_sequences_replaced": 0,
  }
  for bad, length in ds.batch(1024).as_numpy_iterator():
    stats["documents"] += int((length > 0).sum())
    stats["empty_skipped"] += int((length == 0).sum())
    stats["documents_with_invalid_utf8"] += int((bad > 0).sum())
    stats["invalid_utf8_sequences_replaced"] += int(bad.sum())
  return stats
