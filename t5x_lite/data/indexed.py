"""Batches that are a function of the step alone: the synthetic and ready-made sources.

Global example index = step x batch + row, so a process reads its rows of step s directly, any
process count reads the same global batches, and the data position is the number of batches
consumed. The loop drives these sources as it drives the stream reader (stream_iterator.py):

  it = synthetic.train_batches(...) or ready_made.train_batches(...)  # rows of each step
  batch = next(it); at = it.position()                 # batches consumed after that batch
  it.save(directory, at); it.restore(directory)        # one small JSON file, written by process 0

No TensorFlow: an accelerator host reads these with numpy alone.
"""

import dataclasses
import json

import numpy as np

from t5x_lite import files
from t5x_lite.data import logical_shards, quality
from t5x_lite.errors import UserError, first_line

POSITION_FILE = "indexed_position.json"
FORMAT = "indexed-1"


@dataclasses.dataclass(frozen=True)
class IndexPosition:
  """Where an indexed source stands: the batches (steps) consumed."""

  batches: int


def _rows_of_step(read, batch_size: int, rows: range, step: int) -> dict[str, np.ndarray]:
  """This process's rows of global batch `step`, as int32 arrays (what the pipelines deliver)."""
  examples = read(step * batch_size + rows.start, len(rows))
  return {k: np.asarray(v, np.int32) for k, v in examples.items()}


class IndexedBatches:
  """This process's rows of each global batch of `batch_size`, read through `read(first, count)`:
  the examples with global indices [first, first + count) of the source's sequence, as
  {feature: array}."""

  reads_ahead = True

  def __init__(
    self, read, batch_size: int, rows: range, process_index: int = 0, source_name: str = "indexed"
  ):
    self._read = read
    self._batch_size = batch_size
    self._rows = rows
    self._process_index = process_index
    self.source_name = source_name
    self._batches = 0
    self._digests: logical_shards.RowDigests | None = None

  def record_rows(self, path: str, first_row: int) -> None:
    """Appends the sha256 of each row to `path` (pipeline.row_digests_dir)."""
    self._digests = logical_shards.RowDigests(path, first_row)

  def start(self) -> None:
    """Nothing to start: a batch is read when it is due (numpy reads take milliseconds)."""

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    step = self._batches
    batch = _rows_of_step(self._read, self._batch_size, self._rows, step)
    self._batches += 1
    if self._digests:
      self._digests.record(step, batch)
    return batch

  def seek(self, batches: int) -> None:
    """Reads from batch `batches` on (preflight reads ready-made examples round and round)."""
    self._batches = batches

  def position(self) -> IndexPosition:
    return IndexPosition(self._batches)

  def state(self) -> dict[str, int]:
    return {"batches": self._batches}

  def quality_counts(self, position: IndexPosition | None = None) -> dict:
    """Nothing is skipped or repaired here: the examples were checked when they were made."""
    return {k: 0 for k in quality.COUNTERS}

  def close(self) -> None:
    pass

  def save(self, directory: str, position: IndexPosition | None = None) -> None:
    """One file for all processes (they agree on the step), written by process 0."""
    if self._process_index != 0:
      return
    batches = (position or self.position()).batches
    path = files.path(directory) / POSITION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (POSITION_FILE + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "source": self.source_name, "batches": batches}))
    tmp.replace(path)

  def restore(self, directory: str) -> None:
    path = files.path(directory) / POSITION_FILE
    if not path.exists():
      raise UserError(
        f"the data position in {directory} was not saved by {self.source_name} data (no "
        f"{POSITION_FILE}); pass --gin.train.allow_data_change=True to start this data from its "
        f"beginning, or use another MODEL_DIR"
      )
    try:
      self._batches = int(json.loads(path.read_text())["batches"])
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(
        f"the data position {path} is unreadable ({first_line(e)}); use an earlier checkpoint "
        "or --gin.train.allow_data_change=True"
      ) from None


class IndexedEvalBatches:
  """The evaluation batches of an indexed source: the same `steps` batches at every evaluation."""

  def __init__(self, read, batch_size: int, rows: range, steps: int):
    self._read, self._batch_size, self._rows, self._steps = read, batch_size, rows, steps

  def start(self) -> None:
    pass

  def __iter__(self):
    for step in range(self._steps):
      yield _rows_of_step(self._read, self._batch_size, self._rows, step)
