"""Seq2seq examples from local files: TSV (inputs<TAB>targets) or JSON lines ({"inputs", "targets"}).

The format follows the file name: `.tsv` or `.jsonl`/`.json`, each optionally `.gz`. Globs are
expanded. A row is kept when it has a non-empty input and target: a TSV line with exactly two
columns, a JSON line whose `inputs` and `targets` are strings. Anything else (wrong column
count, broken JSON, a missing key) is skipped; blank lines are ignored. Reading is pure TF (no
py_function), so the data position is checkpointable; `row_stats` counts what was skipped
(`inspect_data --stats`). An empty or unreadable file is a one-line error before training starts.
"""

from collections.abc import Mapping
import gzip
import os

import gin
import seqio
import tensorflow as tf

from t5x_lite.data import text_decoding
from t5x_lite.errors import UserError, first_line

SPLITS = ("train", "validation")
FORMATS = {".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
_READ_BATCH = 256


@gin.configurable("seq2seq_files")
def seq2seq_files_config(
  train_files: str | None = None,
  eval_files: str | None = None,
  vocabulary: str | None = None,
) -> dict:
  """File patterns (comma-separated globs) of the train and eval splits, and the SentencePiece
  model to tokenize with (None: the initial checkpoint's, see t5x_lite/finetune_init.py)."""
  return {"train": train_files, "validation": eval_files, "vocabulary": vocabulary}


def file_format(path: str) -> str:
  name = path[:-3] if path.endswith(".gz") else path
  fmt = FORMATS.get(os.path.splitext(name)[1].lower())
  if fmt is None:
    raise UserError(f"{path}: unknown seq2seq file type; name it *.tsv or *.jsonl (optionally .gz)")
  return fmt


def _parse(lines, fmt: str):
  """A batch of lines -> (inputs, targets, valid, blank), all 1-D."""
  lines = text_decoding.repair_invalid_utf8(lines)
  blank = tf.equal(tf.strings.length(tf.strings.strip(lines)), 0)
  if fmt == "tsv":
    columns = tf.strings.split(lines, "\t")
    two = tf.equal(columns.row_lengths(), 2)
    padded = columns.to_tensor(default_value="", shape=[None, 2])
    inputs, targets = tf.strings.strip(padded[:, 0]), tf.strings.strip(padded[:, 1])
  else:
    two = tf.ones_like(blank)
    inputs = tf.strings.strip(text_decoding.json_string_fields(lines, "inputs"))
    targets = tf.strings.strip(text_decoding.json_string_fields(lines, "targets"))
  valid = two & (tf.strings.length(inputs) > 0) & (tf.strings.length(targets) > 0) & ~blank
  return inputs, targets, valid, blank


def _lines(path: str) -> tf.data.Dataset:
  return tf.data.TextLineDataset(path, compression_type="GZIP" if path.endswith(".gz") else "")


def read_examples(path: str, fmt: str) -> tf.data.Dataset:
  """The valid rows of one file as {"inputs": str, "targets": str}."""

  def parse(lines):
    inputs, targets, valid, _ = _parse(lines, fmt)
    return {"inputs": tf.boolean_mask(inputs, valid), "targets": tf.boolean_mask(targets, valid)}

  return _lines(path).batch(_READ_BATCH).map(parse).unbatch()


def _check_readable(path: str) -> None:
  """An unreadable or empty file (no non-blank line) is a one-line error."""
  try:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
      for line in f:
        if line.strip():
          return
  except (OSError, EOFError) as e:
    raise UserError(f"cannot read seq2seq file {path}: {first_line(e)}") from None
  raise UserError(f"seq2seq file {path} is empty; give files with one example per line")


class Seq2SeqFiles(seqio.DataSource):
  """Train and validation file patterns of one seq2seq task (see the module docstring)."""

  setting = "FINETUNE_TRAIN_FILES / FINETUNE_EVAL_FILES"
  format_hint = "TSV lines inputs<TAB>targets, or JSON lines with string 'inputs' and 'targets'"

  def __init__(self, split_to_pattern: Mapping[str, str | None]):
    self._patterns = dict(split_to_pattern)
    super().__init__(splits=SPLITS, num_input_examples=None)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> list[str]:
    pattern = self._patterns.get(split)
    setting = "FINETUNE_TRAIN_FILES" if split == "train" else "FINETUNE_EVAL_FILES"
    if not pattern:
      raise UserError(f"no files configured for the {split} split: set --gin.{setting}=\"'...'\"")
    files = []
    for part in str(pattern).split(","):
      matched = seqio.utils.list_files(os.path.expanduser(part.strip()))
      if not matched:
        raise UserError(f"no files match {part.strip()!r} (set by {setting})")
      files += matched
    return sorted(set(files))

  def records(self, split: str):
    """(files, "lines", parse) for the logical-shard streams (stream_tasks.py): parse maps a
    group of lines and their file indices to ({"inputs", "targets"} of the rows kept, quality
    counters); a group may span files of both formats."""
    files = self.list_shards(split)
    formats = [file_format(path) for path in files]
    if len(set(formats)) == 1:
      return files, "lines", lambda lines, file_index: _examples_of_lines(lines, formats[0])
    tsv_files = tf.constant([f == "tsv" for f in formats])

    def parse(lines, file_index):
      is_tsv = tf.gather(tsv_files, file_index)
      parts = [
        _examples_of_lines(tf.boolean_mask(lines, mask), fmt)
        for fmt, mask in (("tsv", is_tsv), ("jsonl", ~is_tsv))
      ]
      # Rows keep their order within each format; only a group at a file boundary mixes them.
      features = {k: tf.concat([p[0][k] for p in parts], 0) for k in ("inputs", "targets")}
      return features, {k: parts[0][1][k] + parts[1][1][k] for k in parts[0][1]}

    return files, "lines", parse

  def check_files(self) -> None:
    for split in SPLITS:
      if self._patterns.get(split):
        for path in self.list_shards(split):
          file_format(path)
          _check_readable(path)

  def get_dataset(
    self,
    split: str = "train",
    shuffle: bool = True,
    seed: int | None = None,
    shard_info: seqio.ShardInfo | None = None,
    *args,
    **kwargs,
  ) -> tf.data.Dataset:
    files = self.list_shards(split)
    datasets = [read_examples(path, file_format(path)) for path in files]
    ds = datasets[0]
    for more in datasets[1:]:
      ds = ds.concatenate(more)
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds


def _examples_of_lines(lines, fmt: str):
  """A batch of lines of one format -> ({"inputs", "targets"} of the rows kept, counters)."""
  lines = tf.convert_to_tensor(lines)
  valid_lines = text_decoding.repair_invalid_utf8(lines)
  inputs, targets, _, blank = _parse(valid_lines, fmt)
  binary = ~blank & tf.strings.regex_full_match(valid_lines, "(?s).*\\x00.*")
  if fmt == "tsv":
    shaped = tf.equal(tf.strings.split(valid_lines, "\t").row_lengths(), 2)
  else:
    shaped = text_decoding.json_string_fields_found(valid_lines, "inputs")[1]
    shaped &= text_decoding.json_string_fields_found(valid_lines, "targets")[1]
    shaped &= tf.strings.regex_full_match(valid_lines, r"(?s)\s*\{.*\}\s*")
  malformed = ~blank & ~binary & ~shaped
  empty = ~blank & ~binary & ~malformed
  empty &= (tf.strings.length(inputs) == 0) | (tf.strings.length(targets) == 0)
  keep = ~(blank | binary | malformed | empty)
  count = lambda mask: tf.reduce_sum(tf.cast(mask, tf.int64))
  counters = {
    "records": tf.size(lines, out_type=tf.int64),
    "blank": count(blank),
    "binary": count(binary),
    "malformed": count(malformed),
    "empty": count(empty),
    "invalid_utf8": count(tf.not_equal(valid_lines, lines) & keep),
  }
  return {
    "inputs": tf.boolean_mask(inputs, keep),
    "targets": tf.boolean_mask(targets, keep),
  }, counters


def row_stats(source: Seq2SeqFiles, split: str) -> dict:
  """Rows kept, malformed rows skipped and blank lines over a split's files."""
  stats = {"examples": 0, "malformed_rows_skipped": 0, "blank_lines": 0, "files": 0}
  for path in source.list_shards(split):
    fmt = file_format(path)
    _check_readable(path)
    stats["files"] += 1
    ds = _lines(path).batch(1024).map(lambda lines, fmt=fmt: _parse(lines, fmt)[2:])
    for valid, blank in ds.as_numpy_iterator():
      stats["examples"] += int(valid.sum())
      stats["blank_lines"] += int(blank.sum())
      stats["malformed_rows_skipped"] += int((~valid & ~blank).sum())
  return stats
