"""The host side of the logical-shard streams: batches, positions, data-quality counters.

  it = StreamIterator(config, shards=[0, 1, 2, 3])
  batch = next(it)                   # this process's rows: dict of int32 numpy arrays
  at = it.position()                 # where each shard stands after that batch
  it.save(directory, at)             # shard_<j>/position.json per shard, written atomically
  it.restore(directory)              # before the first batch: continue each shard exactly

The pipeline (streams.process_dataset) is built at the first batch, from the restored positions.
A position is a few numbers, so a batch may be read ahead of the step that trains on it: the
trainer saves the position of the last batch it trained on, not of the last one read.
"""

import concurrent.futures
import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from t5x_lite.data import logical_shards, quality, streams, text_encoding
from t5x_lite.errors import UserError, first_line

POSITION_FILE = "position.json"
FORMAT = "stream-1"


@dataclasses.dataclass(frozen=True)
class Position:
  """Where each of a process's shards stands: {shard: start (streams.POSITION)}, {shard: the
  counters before that group}, {shard: the counters including it}, batches consumed."""

  starts: dict
  totals: dict
  seen: dict
  batches: int


def data_error(error: tf.errors.OpError, split: str) -> UserError:
  """A tf.data error of a stream as one line: a data check's own message, else TF's first line."""
  message = str(getattr(error, "message", error))
  if quality.ERROR_TAG in message:
    text = message.split(quality.ERROR_TAG, 1)[1].splitlines()[0].rstrip("]").rstrip()
    # The assertion printed the message as a quoted string: undo its escapes.
    for escaped, plain in (("\\'", "'"), ('\\"', '"'), ("\\\\", "\\")):
      text = text.replace(escaped, plain)
    refused, not_text, _ = text.partition(streams.NOT_TEXT)
    hint = text_encoding.conversion_hint(refused) if not_text else None
    return UserError(hint or text)
  return UserError(f"cannot read the {split} data: {first_line(message, limit=None)}")


class StreamIterator:
  """This process's rows of the training batches; see the module docstring."""

  reads_ahead = True

  def __init__(self, config: streams.StreamConfig, shards: list[int]):
    self._config = config
    self._shards = list(shards)
    zeros = [0] * len(quality.COUNTERS)
    self._position = Position(
      starts={j: [0] * len(streams.POSITION) for j in self._shards},
      totals={j: list(zeros) for j in self._shards},
      seen={j: list(zeros) for j in self._shards},
      batches=0,
    )
    self._iterator = None
    self._first: concurrent.futures.Future | None = None  # the first batch, read by start()
    self._digests: logical_shards.RowDigests | None = None

  @property
  def shards(self) -> list[int]:
    return list(self._shards)

  def record_rows(self, path: str, first_row: int) -> None:
    """Appends the sha256 of each row to `path` (pipeline.row_digests_dir)."""
    self._digests = logical_shards.RowDigests(path, first_row)

  def __iter__(self):
    return self

  def _batches(self):
    if self._iterator is None:
      p = self._position
      self._iterator = iter(
        streams.process_dataset(
          self._config,
          self._shards,
          np.array([p.starts[j] for j in self._shards]),
          np.array([p.totals[j] for j in self._shards]),
        )
      )
    return self._iterator

  def start(self) -> None:
    """Starts building the pipeline and reading the first batch in a thread (after `restore`):
    its start-up overlaps with whatever the caller does until the first `next`."""
    if self._first is None and self._iterator is None:
      executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="first-batch")
      self._first = executor.submit(self._next_raw)
      executor.shutdown(wait=False)

  def _next_raw(self) -> dict[str, np.ndarray]:
    try:
      return {k: v.numpy() for k, v in next(self._batches()).items()}
    except tf.errors.OpError as e:
      raise data_error(e, self._config.split) from None

  def __next__(self) -> dict[str, np.ndarray]:
    first, self._first = self._first, None
    batch = first.result() if first is not None else self._next_raw()
    positions = batch.pop("position")
    before, after = batch.pop("totals_before"), batch.pop("totals_after")
    rows = self._config.rows_per_shard
    starts, totals, seen = {}, {}, {}
    for i, shard in enumerate(self._shards):
      last = (i + 1) * rows - 1  # the shard's last row: the next one is the one after it
      starts[shard] = [int(x) for x in positions[last]]
      starts[shard][-1] += 1
      totals[shard] = [int(x) for x in before[last]]
      seen[shard] = [int(x) for x in after[last]]
    self._position = Position(starts, totals, seen, self._position.batches + 1)
    if self._digests:
      self._digests.record(self._position.batches - 1, batch)
    return batch

  def position(self) -> Position:
    return self._position

  def state(self) -> dict[str, int]:
    return {"batches": self._position.batches}

  def quality_counts(self, position: Position | None = None) -> dict:
    """This process's data-quality counters (quality.COUNTERS) as of `position`."""
    seen = (position or self._position).seen
    return quality.totals([dict(zip(quality.COUNTERS, seen[j])) for j in self._shards])

  def check_skipped(self, counts: dict) -> None:
    """Ends the run when `counts` (of the whole split: all processes') skip more than
    data_quality allows; the pipeline checks this itself when one process reads every shard."""
    if quality.too_many_skipped(counts):
      raise UserError(
        quality.too_many_skipped_message(counts, self._config.where, self._config.spec.format_hint)
      )

  def close(self) -> None:
    self._iterator = self._first = None

  def save(self, directory: str, position: Position | None = None) -> None:
    """One file per shard (shard_<j>/position.json), each written to a temporary name first."""
    p = position or self._position
    for shard in self._shards:
      shard_dir = os.path.join(directory, f"shard_{shard}")
      tf.io.gfile.makedirs(shard_dir)
      path = os.path.join(shard_dir, POSITION_FILE)
      record = {
        "format": FORMAT,
        "shard": shard,
        "batches": p.batches,
        "position": dict(zip(streams.POSITION, p.starts[shard])),
        "counters": dict(zip(quality.COUNTERS, p.totals[shard])),
        "seen": dict(zip(quality.COUNTERS, p.seen[shard])),
        "files": len(self._config.spec.files),
      }
      with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(json.dumps(record))
      tf.io.gfile.rename(path + ".tmp", path, overwrite=True)

  def restore(self, directory: str) -> None:
    """Continues each of this process's shards where `directory` says it stood."""
    if saved_kind(directory) == "seqio":
      # Earlier versions' layouts: DataIterator (seqio_shards.py) reads or refuses them.
      raise UserError(
        f"the data position in {directory} was saved by one seqio pipeline per logical shard "
        f"(an earlier version); build the iterator with pipeline.train_iterator(..., "
        f"saved_data={directory!r}) to continue it"
        if _has_shards(directory)
        else f"the data position in {directory} was saved per process by an older version, which "
        f"no other version can continue; pass --gin.train.allow_data_change=True to keep the "
        f"model and optimizer state and restart the data stream, or use another MODEL_DIR"
      )
    records = {shard: self._read(directory, shard) for shard in self._shards}
    batches = {r["batches"] for r in records.values()}
    if len(batches) > 1:
      raise UserError(
        f"the logical shards in {directory} were saved at different positions "
        f"({sorted(batches)} batches); the data state is damaged: use an earlier "
        f"checkpoint or --gin.train.allow_data_change=True"
      )
    self._position = Position(
      starts={j: [int(r["position"][k]) for k in streams.POSITION] for j, r in records.items()},
      totals={
        j: [int(r["counters"].get(k, 0)) for k in quality.COUNTERS] for j, r in records.items()
      },
      seen={j: [int(r["seen"].get(k, 0)) for k in quality.COUNTERS] for j, r in records.items()},
      batches=batches.pop(),
    )
    self._iterator = self._first = None

  def _read(self, directory: str, shard: int) -> dict:
    path = os.path.join(directory, f"shard_{shard}", POSITION_FILE)
    if not tf.io.gfile.exists(path):
      raise UserError(
        f"no data position for logical shard {shard} in {directory} (missing "
        f"shard_{shard}/{POSITION_FILE}); was logical_shards.count changed?"
      )
    try:
      with tf.io.gfile.GFile(path) as f:
        record = json.load(f)
      record["position"], record["batches"]  # noqa: B018  (present in every complete file)
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(
        f"the data position {path} is unreadable ({first_line(e)}); use an "
        "earlier checkpoint or --gin.train.allow_data_change=True"
      ) from None
    files = len(self._config.spec.files)
    if record.get("files", files) != files:
      raise UserError(
        f"the data position in {path} was saved for {record['files']} {self._config.split} "
        f"files, the split now has {files}: continuing it would read other documents; pass "
        "--gin.train.allow_data_change=True to start the data afresh, or restore the files"
      )
    return record


def saved_kind(directory: str | None) -> str | None:
  """'stream' or 'seqio' (one tf.data checkpoint per shard, earlier versions): how the data
  position in `directory` was saved; None when there is none."""
  if not directory or not tf.io.gfile.isdir(directory):
    return None
  for name in tf.io.gfile.listdir(directory):
    name = name.rstrip("/")
    if name.startswith("shard_"):
      kind = os.path.join(directory, name, POSITION_FILE)
      return "stream" if tf.io.gfile.exists(kind) else "seqio"
    if name.startswith("process_"):
      return "seqio"
  return None


def _has_shards(directory: str) -> bool:
  return any(n.startswith("shard_") for n in tf.io.gfile.listdir(directory))
