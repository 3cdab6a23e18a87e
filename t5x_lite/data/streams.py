"""A process's logical shards of a task as ONE tf.data pipeline whose positions are numbers.

Logical shard j of `count` (logical_shards.py) is a stream of its own:
  records   whole files when the split has at least `count` files (files j, j+count, ...), in an
            order drawn from (seed, count, j, epoch); else every k-th line of one file (file
            j % files, lines j // files + i * k, k the number of shards sharing that file), each
            epoch from a line drawn the same way (so groups differ between epochs) and wrapping
            around; such small splits are kept in memory after the first epoch (at most
            `lines_in_memory_bytes` of files), since each shard reads all of its file;
  groups    consecutive GROUP_SIZE records, each group parsed, tokenized and turned into
            examples at once (span corruption: chunks, segments, masks) with randomness drawn
            from (seed, count, j, epoch, group), then shuffled within the group;
  position  (epoch, piece, line, group, skip): where the group being consumed starts (the piece
            of the epoch's reading order, the line in its file) and how many of its examples
            were consumed. Reading again from there and skipping continues the shard exactly, so
            any process can continue any shard: the process count may change.
All of a process's shards run in one dataset: an interleave over shard ids whose stream function
is traced once (per-shard parameters are tensors), parallel across shards on one thread pool,
one prefetch. Start-up and memory hardly grow with the number of shards. Each row carries its
position and its shard's data-quality counters (quality.py) for the host (stream_iterator.py).
"""

from collections.abc import Callable, Sequence
import dataclasses
import os

import numpy as np
import tensorflow as tf

from t5x_lite.data import quality
from t5x_lite.tokens import EOS_ID

# Records per group: span corruption concatenates this many documents before cutting segments
# (T5's 128), so a group's last, shorter segment is rare.
GROUP_SIZE = 128
POSITION = ("epoch", "piece", "line", "group", "skip")
FEATURES = (
  "encoder_input_tokens",
  "decoder_input_tokens",
  "decoder_target_tokens",
  "decoder_loss_weights",
)
_FOREVER = 2**62
# Follows the file's name in the message that refuses it (the host looks at such a file again:
# text in UTF-16 or UTF-32 gets a conversion command instead, text_encoding.py).
NOT_TEXT = " is not text: "


@dataclasses.dataclass(frozen=True)
class StreamSpec:
  """How one split of a task becomes examples (built by the task: stream_tasks.py)."""

  files: tuple[str, ...]
  record_format: str  # "lines" (text, gzip when named .gz) or "tfrecord"
  # (records [n] string, file index [n] int64) -> ({name: ragged int [documents, None]},
  # {counter name: int64 scalar}); records it skips are left out of the documents.
  parse: Callable
  # ({name: ragged [documents, None]}, seeds [num_seeds, 2]) -> {"inputs", "targets"} ragged
  # [examples, None] without EOS.
  make_examples: Callable
  num_seeds: int
  setting: str  # the gin setting that names the files, for messages
  format_hint: str = "one document per line"  # what a record must look like, for messages


@dataclasses.dataclass(frozen=True)
class StreamConfig:
  """Everything a process's pipeline depends on besides where each shard starts."""

  spec: StreamSpec
  split: str
  count: int  # logical shards of the whole run
  rows_per_shard: int
  lengths: dict
  seed: int
  shuffle: bool
  group_size: int = GROUP_SIZE
  # Shards that share a file (fewer files than shards) keep their lines in memory after the
  # first epoch's read when the split's files hold at most this many bytes on disk.
  lines_in_memory_bytes: int = 256 << 20

  @property
  def file_sharded(self) -> bool:
    return len(self.spec.files) >= self.count

  def reads(self, shard: int) -> tuple[tuple[int, int, int], ...]:
    """What a logical shard reads: (file index, residue, modulus) per file: the file's lines
    whose number is the residue modulo the modulus."""
    files = len(self.spec.files)
    if self.file_sharded:
      return tuple((f, 0, 1) for f in range(shard, files, self.count))
    file = shard % files
    return ((file, shard // files, len(range(file, self.count, files))),)

  @property
  def where(self) -> str:
    """The split, for messages: its file when it has one."""
    if len(self.spec.files) == 1:
      return self.spec.files[0]
    return f"the {self.split} split ({self.spec.setting})"

  @property
  def lines_in_memory(self) -> bool:
    if self.file_sharded:
      return False
    sizes = [tf.io.gfile.stat(path).length for path in self.spec.files]
    return sum(sizes) <= self.lines_in_memory_bytes


# Bytes each open file buffers (per logical shard). TF's default for gzip, 256 KiB for input and
# as much for output, costs memory with many shards and measured slower than this.
_READ_BUFFER = 64 << 10


def _reader(record_format: str, path) -> tf.data.Dataset:
  if record_format == "tfrecord":
    return tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER)
  compression = tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")
  return tf.data.TextLineDataset(path, compression_type=compression, buffer_size=_READ_BUFFER)


def cpu_cores() -> int:
  """The cores this process may run on (respects taskset and cgroup CPU sets)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def _counter_vector(counters: dict) -> tf.Tensor:
  return tf.stack([tf.cast(counters.get(n, 0), tf.int64) for n in quality.COUNTERS])


def _data_error(condition, *parts):
  """An assertion whose failure message the host shows as one line (quality.ERROR_TAG): `parts`
  are Python strings and tensors, joined."""
  strings = [quality.ERROR_TAG]
  for part in parts:
    part = tf.convert_to_tensor(part)
    strings.append(part if part.dtype == tf.string else tf.strings.as_string(part))
  return tf.debugging.Assert(condition, [tf.strings.join(strings)], summarize=1)


class _Graph:
  """The traced functions of one StreamConfig (methods run inside tf.data functions)."""

  def __init__(self, config: StreamConfig, parallelism: int):
    self.c = config
    self.files = tf.constant(list(config.spec.files), tf.string)
    reads = [config.reads(j) for j in range(config.count)]
    most = max(len(r) for r in reads)
    self.reads = tf.constant([list(r) + [(0, 0, 1)] * (most - len(r)) for r in reads], tf.int64)
    self.num_reads = tf.constant([len(r) for r in reads], tf.int64)
    self.lines_in_memory = config.lines_in_memory
    # Threads per shard for parsing and examples: the shards of a process share the cores.
    self.inner_parallelism = parallelism
    self.max_skipped_fraction, self.allowed_skipped = quality.data_quality_config()

  # -- records --------------------------------------------------------------------------------
  def _epoch_pieces(self, shard, shard_seed, epoch):
    """[pieces, 5] (file, first line, end line or -1, residue, modulus) in the order epoch
    `epoch` reads them: the shard's files shuffled; a file shared with other shards from a
    random line (within the first groups, so no group repeats the last epoch's), then its start.
    """
    reads = self.reads[shard][: self.num_reads[shard]]
    whole = tf.stack(
      [
        reads[:, 0],
        tf.zeros_like(reads[:, 0]),
        -tf.ones_like(reads[:, 0]),
        reads[:, 1],
        reads[:, 2],
      ],
      axis=1,
    )
    if not self.c.shuffle:
      return whole
    key = tf.stack([shard_seed, epoch])
    if self.c.file_sharded:
      return tf.gather(whole, tf.argsort(tf.random.stateless_uniform([tf.shape(whole)[0]], key)))
    file, residue, modulus = tf.unstack(reads[0])
    offset = tf.random.stateless_uniform(
      [], key, maxval=modulus * self.c.group_size, dtype=tf.int64
    )
    return tf.stack(
      [
        tf.stack([file, offset, -1, residue, modulus]),
        tf.stack([file, 0, offset, residue, modulus]),
      ]
    )

  def _shared_file_lines(self, shard):
    """A shard's lines of the file it shares (line mode), kept in memory by the first epoch that
    reads them from here: later epochs read no file.

    The cache is filled in one call (`batch` of all the lines right after `cache`): a reader that
    stops part way (the end of a run, a `take`) leaves no partly filled cache, which TF discards
    with a warning per shard (cache_dataset_ops.cc "did not fully read the dataset being
    cached") and fills again on the next epoch."""
    file, residue, modulus = tf.unstack(self.reads[shard][0])
    lines = self._lines(file, tf.constant(0, tf.int64), tf.constant(-1, tf.int64), residue, modulus)
    return lines.cache().batch(_FOREVER).unbatch()

  def _lines(self, file, begin, end, residue, modulus):
    """(line number, record) of lines [begin, end) of a file (end -1: to its end) whose number is
    `residue` modulo `modulus`, selected in batches (a per-line filter costs more than reading)."""
    lines = _reader(self.c.spec.record_format, self.files[file]).skip(begin)
    lines = lines.take(tf.where(end < 0, tf.constant(-1, tf.int64), end - begin))
    numbered = tf.data.Dataset.zip((tf.data.Dataset.range(begin, _FOREVER), lines))
    if self.c.file_sharded:
      return numbered
    return (
      numbered.batch(self.c.group_size)
      .map(lambda n, r: (lambda keep: (n[keep], r[keep]))(tf.equal(n % modulus, residue)))
      .unbatch()
    )

  def _records(self, order, first_piece, first_line, cached=None):
    """(piece position, file index, line, record) from `first_line` of piece `first_piece` on;
    `cached`: the shard's lines of its shared file (_shared_file_lines), to read them from."""

    def one_piece(piece_pos):
      file, begin, end, residue, modulus = tf.unstack(order[piece_pos])
      begin = tf.where(tf.equal(piece_pos, first_piece), tf.maximum(begin, first_line), begin)
      if cached is None:
        lines = self._lines(file, begin, end, residue, modulus)
      else:  # the cached lines are residue, residue + modulus, ...: index by arithmetic
        first = (tf.maximum(begin - residue, 0) + modulus - 1) // modulus
        lines = cached.skip(first)
        if_end = (end - residue + modulus - 1) // modulus - first
        lines = lines.take(tf.where(end < 0, tf.constant(-1, tf.int64), tf.maximum(if_end, 0)))
      return lines.map(lambda line, record: (piece_pos, file, line, record))

    return tf.data.Dataset.range(first_piece, tf.shape(order, out_type=tf.int64)[0]).flat_map(
      one_piece
    )

  def _epoch_groups(self, shard, shard_seed, start, epoch, cached=None):
    """The groups of one epoch (from `start` in the epoch it names), then an end marker."""
    first = tf.equal(epoch, start[0])
    first_piece, first_line, first_group = (tf.where(first, start[i], 0) for i in (1, 2, 3))
    whole_epoch = tf.logical_or(tf.logical_not(first), tf.reduce_all(tf.equal(start[1:], 0)))
    order = self._epoch_pieces(shard, shard_seed, epoch)
    records = self._records(order, first_piece, first_line, cached)
    records = records.batch(self.c.group_size)
    groups = records.enumerate(start=first_group).map(
      lambda group, r: {
        "epoch": epoch,
        "group": group,
        "piece": r[0],
        "file": r[1],
        "line": r[2],
        "records": r[3],
        "end": False,
        "whole_epoch": whole_epoch,
      }
    )
    end = {
      "epoch": epoch,
      "group": tf.constant(-1, tf.int64),
      "piece": tf.zeros([0], tf.int64),
      "file": tf.zeros([0], tf.int64),
      "line": tf.zeros([0], tf.int64),
      "records": tf.zeros([0], tf.string),
      "end": True,
      "whole_epoch": whole_epoch,
    }
    return groups.concatenate(tf.data.Dataset.from_tensors(end))

  # -- parsing and checks ---------------------------------------------------------------------
  def _parse(self, group):
    features, counters = self.c.spec.parse(group["records"], group["file"])
    kept = {k: v for k, v in group.items() if k != "records"}  # the raw text is not needed after
    return {**kept, "features": features, "counters": _counter_vector(counters)}

  def _file_name(self, group):
    index = tf.concat([group["file"], [-1]], 0)[0]
    return tf.where(index >= 0, tf.gather(self.files, tf.maximum(index, 0)), "?")

  def _check(self, shard, state, group):
    """Cumulative counters of the shard; fails on a binary file, too many skipped records, or
    an epoch without documents."""
    totals, documents_in_epoch = state
    counters = group["counters"]
    new_totals = totals + counters
    c = dict(zip(quality.COUNTERS, tf.unstack(counters)))
    t = dict(zip(quality.COUNTERS, tf.unstack(new_totals)))
    name = self._file_name(group)
    non_blank = c["records"] - c["blank"]
    mostly_binary = tf.logical_and(c["binary"] > 0, 2 * c["binary"] >= non_blank)
    documents = documents_in_epoch + tf.cast(group["features"]["targets"].nrows(), tf.int64)
    empty_epoch = group["end"] & group["whole_epoch"] & tf.equal(documents, 0)
    checks = [
      _data_error(
        tf.logical_not(mostly_binary),
        name,
        NOT_TEXT,
        c["binary"],
        " of ",
        non_blank,
        f" records read hold NUL bytes; remove it from {self.c.spec.setting}",
      ),
      _data_error(tf.logical_not(empty_epoch), self._no_documents(shard, _skipped_note(t))),
    ]
    with tf.control_dependencies(checks):
      out = {**group, "totals_before": tf.identity(totals), "totals_after": new_totals}
    next_documents = tf.where(group["end"], tf.constant(0, tf.int64), documents)
    return (new_totals, next_documents), out

  def _no_documents(self, shard, skipped_note):
    where = f"the {self.c.split} split ({self.c.spec.setting})"
    if self.c.count == 1:
      return tf.strings.join(
        [
          f"{where} holds no documents: its files are empty or hold only blank or skipped "
          f"lines ({self.c.spec.format_hint})",
          skipped_note,
          "; check the files",
        ]
      )
    return tf.strings.join(
      [
        f"{where} gives logical data shard ",
        tf.strings.as_string(shard),
        f" of {self.c.count} no document: its files are empty or hold only blank or skipped "
        f"lines ({self.c.spec.format_hint})",
        skipped_note,
        f", or too few documents for logical_shards.count={self.c.count}; check the files or "
        "lower logical_shards.count (a divisor of BATCH_SIZE)",
      ]
    )

  def check_skipped(self, totals):
    """Fails when the counters `totals` (of the whole split) skip more than data_quality
    allows (quality.too_many_skipped)."""
    t = dict(zip(quality.COUNTERS, tf.unstack(totals)))
    skipped = t["malformed"] + t["empty"] + t["binary"]
    allowed = self.allowed_skipped + tf.cast(
      self.max_skipped_fraction * tf.cast(t["records"] - t["blank"], tf.float64), tf.int64
    )
    return _data_error(
      skipped <= allowed,
      self.c.where,
      ": ",
      skipped,
      " of the ",
      t["records"] - t["blank"],
      " records read so far were skipped (",
      t["malformed"],
      " malformed, ",
      t["empty"],
      " empty, ",
      t["binary"],
      " binary), more than data_quality.max_skipped_fraction="
      f"{self.max_skipped_fraction}: {self.c.spec.format_hint}; repair or remove the bad "
      "records, or raise the setting",
    )

  # -- examples -------------------------------------------------------------------------------
  def _examples(self, shard_seed, group):
    """The group's examples, shuffled, as fixed-length features with positions and counters."""
    key = tf.random.experimental.stateless_fold_in(
      tf.stack([shard_seed, group["epoch"]]), group["group"]
    )
    seeds = tf.random.experimental.stateless_split(key, self.c.spec.num_seeds + 1)
    examples = self.c.spec.make_examples(group["features"], seeds[:-1])
    n = examples["targets"].nrows()
    if self.c.shuffle:
      order = tf.argsort(tf.random.stateless_uniform([n], seeds[-1]), stable=True)
      examples = {k: tf.gather(v, order) for k, v in examples.items()}
    features = _features(examples["inputs"], examples["targets"], self.c.lengths)
    first = tf.stack([group["epoch"], group["piece"][0], group["line"][0], group["group"]])
    features["position"] = tf.concat(
      [tf.tile(first[tf.newaxis], [n, 1]), tf.range(n, dtype=tf.int64)[:, tf.newaxis]], 1
    )
    for name in ("totals_before", "totals_after"):
      features[name] = tf.tile(group[name][tf.newaxis], [n, 1])
    return features

  def _map(self, dataset, fn):
    """Parallel within a shard only when the process has more cores than shards: a parallel map
    works on the next group before it is asked for, and with many shards those groups only
    delay the first batch and hold memory."""
    if self.inner_parallelism > 1:
      return dataset.map(fn, num_parallel_calls=self.inner_parallelism, deterministic=True)
    return dataset.map(fn)

  def shard_stream(self, shard, start, totals):
    """One logical shard's examples from `start` (POSITION), its counters starting at `totals`."""
    shard_seed = tf.constant(self.c.seed * self.c.count, tf.int64) + shard
    if self.lines_in_memory:
      # The first epoch reads the file as it goes (reading all of the shard's lines into memory
      # would delay the first batch); the next one keeps them for the rest.
      cached = self._shared_file_lines(shard)
      later = tf.data.Dataset.range(start[0] + 1, _FOREVER)
      groups = self._epoch_groups(shard, shard_seed, start, start[0]).concatenate(
        later.flat_map(lambda e: self._epoch_groups(shard, shard_seed, start, e, cached))
      )
    else:
      epochs = tf.data.Dataset.range(start[0], _FOREVER)
      groups = epochs.flat_map(lambda e: self._epoch_groups(shard, shard_seed, start, e))
    groups = self._map(groups, self._parse)
    groups = groups.scan(
      (totals, tf.constant(0, tf.int64)), lambda state, g: self._check(shard, state, g)
    ).filter(lambda g: tf.logical_not(g["end"]))
    examples = self._map(groups, lambda g: self._examples(shard_seed, g))
    return examples.unbatch().skip(start[4])


def _with_eos(tokens: tf.RaggedTensor, length: int) -> tf.Tensor:
  """Trimmed to length - 1, EOS appended, padded with 0 to `length` (seqio's
  append_eos_after_trim, then its feature converter's padding)."""
  tokens = tf.cast(tokens[:, : length - 1], tf.int32)
  eos = tf.fill([tokens.nrows(), 1], tf.constant(EOS_ID, tf.int32))
  return tf.concat([tokens, tf.RaggedTensor.from_tensor(eos)], axis=1).to_tensor(
    0, shape=[None, length]
  )


def _skipped_note(t: dict) -> tf.Tensor:
  """`; N of the M records read were skipped (...)` when a shard skipped any, else ""."""
  skipped = t["malformed"] + t["empty"] + t["binary"]
  note = tf.strings.join(
    [
      "; ",
      tf.strings.as_string(skipped),
      " of the ",
      tf.strings.as_string(t["records"] - t["blank"]),
      " records read were skipped (",
      tf.strings.as_string(t["malformed"]),
      " malformed, ",
      tf.strings.as_string(t["empty"]),
      " empty, ",
      tf.strings.as_string(t["binary"]),
      " binary)",
    ]
  )
  return tf.where(skipped > 0, note, "")


def _features(inputs, targets, lengths: dict) -> dict:
  """seqio.EncDecFeatureConverter(pack=False) of a batch of examples, EOS appended."""
  targets = _with_eos(targets, lengths["targets"])
  return {
    "encoder_input_tokens": _with_eos(inputs, lengths["inputs"]),
    "decoder_target_tokens": targets,
    # Teacher forcing: the targets shifted right, decoding starting from id 0.
    "decoder_input_tokens": tf.pad(targets[:, :-1], [[0, 0], [1, 0]]),
    "decoder_loss_weights": tf.cast(tf.not_equal(targets, 0), tf.int32),
  }


def process_dataset(
  config: StreamConfig,
  shards: Sequence[int],
  starts: np.ndarray,
  totals: np.ndarray,
  parallelism: int | None = None,
) -> tf.data.Dataset:
  """This process's rows of each batch: `shards` (in order) from `starts` [n, 5] with counters
  `totals` [n, len(quality.COUNTERS)]; features plus "position", "totals_before/after" per row."""
  parallelism = parallelism or cpu_cores()
  n = len(shards)
  graph = _Graph(config, max(1, parallelism // n))
  rows = config.rows_per_shard
  inputs = tf.data.Dataset.from_tensor_slices(
    (np.asarray(shards, np.int64), np.asarray(starts, np.int64), np.asarray(totals, np.int64))
  )
  per_shard = inputs.interleave(
    lambda shard, start, t: graph.shard_stream(shard, start, t).batch(rows, drop_remainder=True),
    cycle_length=n,
    block_length=1,
    num_parallel_calls=min(n, parallelism),
    deterministic=True,
  )
  # The skipped-records limit holds for the whole split: checked here when this process reads
  # all of its shards, else by the trainer over the counts of all processes (training.py).
  whole_split = sorted(shards) == list(range(config.count))

  def merge(b):
    checks = (
      [graph.check_skipped(tf.reduce_sum(b["totals_after"][:, -1], 0))] if whole_split else []
    )
    with tf.control_dependencies(checks):
      return {k: tf.reshape(v, tf.concat([[n * rows], tf.shape(v)[2:]], 0)) for k, v in b.items()}

  merged = per_shard.batch(n, drop_remainder=True).map(merge)
  options = tf.data.Options()
  options.deterministic = True
  # Parallelism is set explicitly; tf.data's autotuning thread would only delay exit.
  options.autotune.enabled = False
  return merged.with_options(options).prefetch(2)
