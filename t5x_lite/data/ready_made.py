"""Ready-made examples: a run's model-ready batches written once on CPU hosts, read without TF.

  python -m t5x_lite.write_examples --gin_file=... --output_dir=DIR --steps=N   (makes them)
  --gin.ready_made.directory="'DIR'"                     (the train command reads them)

DIR holds examples.json (what made the files: task, feature lengths, batch size, seed, data
settings, vocabulary; the files' shapes), the task's SentencePiece model (spiece.model) when it has
one, and per split one .npy file per feature, chunk of steps and block of rows:

  train/<feature>.chunk<k>.rows<a>-<b>.npy    [chunk steps, b - a rows, feature length]
  validation/<feature>.rows<a>-<b>.npy        [eval steps, b - a rows, feature length]

in the smallest unsigned integer dtype that holds the values (uint16 for T5's 32128 ids). The
examples form one sequence: global example index = step x batch + row, so a run with any process
count (and any batch size) reads the same examples for the same step, resumes by step, and spends
no CPU on input beyond a memory map. Each file is written to a temporary name and renamed, so a
writer killed and run again keeps every finished file.
"""

import dataclasses
import functools
import hashlib
import io
import json

from etils import epath
import gin
import numpy as np

from t5x_lite import files, paths
from t5x_lite.data import indexed
from t5x_lite.errors import UserError, first_line

INDEX_FILE = "examples.json"
VOCABULARY_FILE = "spiece.model"
FORMAT = "t5x_lite-ready-made-1"
TRAIN, VALIDATION = "train", "validation"


@gin.configurable("ready_made")
def ready_made_config(directory: str | None = None) -> str | None:
  """The directory of ready-made examples the run trains on (None: the task's own pipeline)."""
  return directory


def smallest_dtype(max_value: int) -> np.dtype:
  for dtype in (np.uint8, np.uint16, np.uint32):
    if max_value <= np.iinfo(dtype).max:
      return np.dtype(dtype)
  return np.dtype(np.int64)


def train_file(feature: str, chunk: int, rows: range) -> str:
  return f"{TRAIN}/{feature}.chunk{chunk:05d}.rows{rows.start:05d}-{rows.stop:05d}.npy"


def validation_file(feature: str, rows: range) -> str:
  return f"{VALIDATION}/{feature}.rows{rows.start:05d}-{rows.stop:05d}.npy"


def write_array(directory: str, name: str, array: np.ndarray) -> None:
  """`array` as DIR/name, renamed into place once complete."""
  path = files.path(directory) / name
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  np.save(buffer, array, allow_pickle=False)
  tmp = path.parent / f".{path.name}.tmp"
  tmp.write_bytes(buffer.getvalue())
  tmp.replace(path)


def _load(path: epath.Path) -> np.ndarray:
  if not paths.is_remote(str(path)):
    return np.load(str(path), mmap_mode="r", allow_pickle=False)  # read as needed, no copy
  return np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)


@dataclasses.dataclass(frozen=True)
class Index:
  """examples.json: what the files hold and what made them."""

  directory: str
  record: dict

  @property
  def steps(self) -> int:
    return self.record["steps"]

  @property
  def batch_size(self) -> int:
    return self.record["batch_size"]

  @property
  def examples(self) -> int:
    return self.steps * self.batch_size

  @property
  def features(self) -> dict:
    return self.record["features"]

  def vocabulary_path(self) -> str | None:
    path = files.path(self.directory) / VOCABULARY_FILE
    return str(path) if path.exists() else None


def read_index(directory: str) -> Index:
  path = files.path(directory) / INDEX_FILE
  if not path.exists():
    what = "does not exist" if not files.path(directory).exists() else f"holds no {INDEX_FILE}"
    raise UserError(
      f"ready_made.directory {directory} {what}; write the examples with python -m "
      f"t5x_lite.write_examples --gin_file=... --output_dir={directory} --steps=N"
    )
  try:
    record = json.loads(path.read_text())
    record["steps"], record["batch_size"], record["features"]  # noqa: B018
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f"{path} is unreadable ({first_line(e)}); write the examples again") from None
  if record.get("format") != FORMAT:
    raise UserError(f"{path} is not a ready-made examples index (format {record.get('format')!r})")
  if not record.get("complete"):
    raise UserError(
      f"the examples in {directory} are incomplete (their writer stopped before the end); run the "
      f"same python -m t5x_lite.write_examples command again: it keeps the finished files"
    )
  return Index(str(directory), record)


def check_run(index: Index, task: str, lengths: dict, batch_size: int, end_step: int) -> None:
  """One line for a run these files cannot serve: another task, other lengths, too few steps."""
  made = index.record
  if made["task"] != task:
    raise UserError(
      f"the examples in {index.directory} were made from task {made['task']!r}, this run names "
      f"{task!r}; set --gin.MIXTURE_OR_TASK_NAME=\"'{made['task']}'\" or write examples of "
      f"{task!r}"
    )
  wanted = {k: int(v) for k, v in lengths.items()}
  if made["feature_lengths"] != wanted:
    raise UserError(
      f"the examples in {index.directory} have feature lengths {made['feature_lengths']}, this "
      f"run wants {wanted}; set TASK_FEATURE_LENGTHS to theirs or write examples at these lengths"
    )
  needed = end_step * batch_size
  if needed > index.examples:
    held_steps = index.examples // batch_size
    raise UserError(
      f"the examples in {index.directory} hold {index.steps} steps of batch "
      f"{index.batch_size} ({index.examples} examples), this run needs {needed} "
      f"({end_step} steps of {batch_size}); write more with --steps={-(-needed // index.batch_size)}"
      f" or train at most {held_steps} steps"
    )


def check_vocabulary(index: Index, sentencepiece_path: str | None) -> None:
  """Refuses a vocabulary file the run names that is not the one the examples were made with."""
  if not sentencepiece_path:
    return
  path = files.path(sentencepiece_path)
  if not path.exists():
    raise UserError(f"the vocabulary file {sentencepiece_path} does not exist")
  digest = hashlib.sha256(path.read_bytes()).hexdigest()
  if index.record.get("vocabulary_sha256") not in (None, digest):
    raise UserError(
      f"the examples in {index.directory} were tokenized with another vocabulary than "
      f"{sentencepiece_path} (sha256 {index.record['vocabulary_sha256'][:12]}..., this one "
      f"{digest[:12]}...); write examples with this vocabulary, or drop the binding"
    )


class _Split:
  """The arrays of one split: {feature: [(rows, array)]} per chunk, opened when first read."""

  def __init__(self, index: Index, split: str):
    self._index, self._split = index, split
    self._blocks = [range(a, b) for a, b in index.record["row_blocks"]]

  @functools.lru_cache(maxsize=64)  # noqa: B019  (one reader per run; a few chunks are open)
  def _array(self, feature: str, chunk: int, block: int) -> np.ndarray:
    rows = self._blocks[block]
    name = (
      train_file(feature, chunk, rows) if self._split == TRAIN else validation_file(feature, rows)
    )
    path = files.path(self._index.directory) / name
    if not path.exists():
      raise UserError(f"ready-made examples file {path} is missing; write the examples again")
    return _load(path)

  def read(self, first: int, count: int, chunk_steps: int) -> dict[str, np.ndarray]:
    """The examples [first, first + count) of the split's sequence."""
    out = {name: [] for name in self._index.features}
    batch = self._index.batch_size
    e, end = first, first + count
    while e < end:
      step, row = divmod(e, batch)
      block = next(i for i, r in enumerate(self._blocks) if row in r)
      take = min(end - e, self._blocks[block].stop - row)
      chunk, at = divmod(step, chunk_steps)
      offset = row - self._blocks[block].start
      for name in out:
        out[name].append(self._array(name, chunk, block)[at, offset : offset + take])
      e += take
    return {name: np.concatenate(parts) for name, parts in out.items()}


def train_batches(
  index: Index, batch_size: int, rows: range, process_index: int = 0
) -> indexed.IndexedBatches:
  split = _Split(index, TRAIN)

  def read(first: int, count: int) -> dict[str, np.ndarray]:
    if first + count > index.examples:
      raise UserError(
        f"the examples in {index.directory} end at example {index.examples}; this step needs up "
        f"to {first + count}: write more with --steps"
      )
    return split.read(first, count, index.record["chunk_steps"])

  return indexed.IndexedBatches(read, batch_size, rows, process_index, "ready-made examples")


def eval_batches(index: Index, batch_size: int, rows: range, steps: int):
  held_steps = index.record.get("eval_steps", 0)
  held = held_steps * index.batch_size
  if steps * batch_size > held:
    raise UserError(
      f"the examples in {index.directory} hold {held} validation examples, this run evaluates "
      f"{steps} batches of {batch_size}; set train.eval_steps <= {held // batch_size} or write "
      f"the examples with --eval_steps={-(-steps * batch_size // index.batch_size)}"
    )
  split = _Split(index, VALIDATION)
  # The validation files hold all their steps in one chunk.
  return indexed.IndexedEvalBatches(
    lambda first, count: split.read(first, count, max(held_steps, 1)), batch_size, rows, steps
  )


def file_names(record: dict) -> list[str]:
  """Every array file the index says its directory holds."""
  blocks = [range(a, b) for a, b in record["row_blocks"]]
  chunks = -(-record["steps"] // record["chunk_steps"])
  names = [train_file(f, k, r) for f in record["features"] for k in range(chunks) for r in blocks]
  if record.get("eval_steps"):
    names += [validation_file(f, r) for f in record["features"] for r in blocks]
  return names
