"""The trainer's input pipeline: a task's examples as batched, sharded, resumable features.

  it = train_iterator("quickstart_span_corruption", {"inputs": 512, "targets": 114}, 128,
                      process_index=jax.process_index(), process_count=jax.process_count())
  batch = next(it)          # this process's rows of the global batch: dict of int32 numpy arrays
  it.save(dir); it.restore(dir)   # the exact position of each logical shard

The global batch sequence does not depend on the process count (logical_shards.py). Tasks that
are StreamTasks (ours) are read by one pipeline per process whose positions are numbers
(streams.py, stream_iterator.py); other tasks, mixtures, packing, and data positions saved by
earlier versions by one seqio pipeline per logical shard (seqio_shards.py). `get_dataset` builds
one plain seqio stream.
"""

from collections.abc import Mapping
import concurrent.futures
import os

import gin
import seqio
import tensorflow as tf

from t5x_lite.data import logical_shards, registry, seqio_shards, stream_iterator, streams
from t5x_lite.data.seqio_shards import DEFAULT_SEED, DataIterator, get_dataset  # noqa: F401
from t5x_lite.data.stream_tasks import supports_streams
from t5x_lite.errors import UserError


def hide_accelerators_from_tf() -> None:
  """Keeps TF (only used for data) off GPUs so JAX owns them."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF devices were already initialised; nothing left to change.
    pass


hide_accelerators_from_tf()


def get_vocabulary(mixture_or_task_name: str) -> seqio.Vocabulary:
  """The (shared inputs/targets) vocabulary of a task or mixture, from the current gin config."""
  provider = registry.refresh(mixture_or_task_name)
  return provider.output_features["targets"].vocabulary


@gin.configurable("row_digests")
def row_digests_dir(directory: str | None = None) -> str | None:
  """When set, each process appends the sha256 of every training row it reads to
  DIRECTORY/process_<i>.jsonl, one line per batch with the rows' place in the global batch: a
  check that runs on different process counts trained on the same rows."""
  return directory


def _stream_config(
  provider, split: str, lengths: Mapping[str, int], plan, seed: int | None, shuffle: bool
) -> streams.StreamConfig:
  lengths = {k: int(v) for k, v in lengths.items()}
  _check_lengths(lengths)
  spec = provider.stream_spec(split, lengths)
  return streams.StreamConfig(
    spec=spec,
    split=split,
    count=plan.count,
    rows_per_shard=plan.rows_per_shard,
    lengths=lengths,
    seed=DEFAULT_SEED if seed is None else seed,
    shuffle=shuffle,
  )


def _check_lengths(lengths: Mapping[str, int]) -> None:
  missing = {"inputs", "targets"} - set(lengths)
  if missing:
    raise UserError(
      f"TASK_FEATURE_LENGTHS needs 'inputs' and 'targets' lengths, missing {sorted(missing)}"
    )


@gin.configurable("data_reader")
def data_reader_config(kind: str = "auto") -> str:
  """How the trainer reads its data: 'auto' (one stream pipeline per process for the tasks that
  are StreamTasks, else 'seqio') or 'seqio' (one seqio pipeline per logical shard, the data order
  of earlier versions). A data position saved one way is continued the same way."""
  if kind not in ("auto", "seqio"):
    raise UserError(f"data_reader.kind must be 'auto' or 'seqio', got {kind!r}")
  return kind


def reads_streams(provider, use_packing: bool, saved_data: str | None = None) -> bool:
  """Whether the trainer reads `provider` as streams (else one seqio pipeline per shard)."""
  saved = stream_iterator.saved_kind(saved_data)
  if saved is not None:
    return saved == "stream"
  return supports_streams(provider) and not use_packing and data_reader_config() == "auto"


def train_iterator(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  batch_size: int,
  *,
  process_index: int = 0,
  process_count: int = 1,
  seed: int | None = None,
  use_packing: bool = False,
  batch_sharding=None,
  saved_data: str | None = None,
):
  """This process's rows of the training batches: its logical shards, repeated and shuffled.

  `saved_data`: the data position this run will restore (its layout decides how the data is
  read). With `batch_sharding` (the sharding the trainer assembles batches with), checks that
  these rows are the ones this process's devices hold.
  """
  plan = logical_shards.make_plan(batch_size, process_index, process_count)
  if batch_sharding is not None:
    logical_shards.check_process_rows(plan, batch_sharding)
  provider = registry.refresh(mixture_or_task_name)
  if reads_streams(provider, use_packing, saved_data):
    config = _stream_config(provider, "train", task_feature_lengths, plan, seed, shuffle=True)
    it = stream_iterator.StreamIterator(config, list(plan.shards))
  else:
    autotune = bool(saved_data) and DataIterator.saved_autotune(saved_data)
    it = seqio_shards.train_iterator(
      mixture_or_task_name,
      task_feature_lengths,
      plan,
      seed=seed,
      use_packing=use_packing,
      autotune=autotune,
    )
  if row_digests_dir():
    it.record_rows(
      os.path.join(row_digests_dir(), f"process_{process_index}.jsonl"), plan.rows.start
    )
  return it


def eval_dataset(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  batch_size: int,
  *,
  process_index: int = 0,
  process_count: int = 1,
  seed: int | None = None,
  use_packing: bool = False,
  split: str = "validation",
) -> tf.data.Dataset:
  """This process's rows of the (repeated, unshuffled) evaluation batches, as one dataset."""
  plan = logical_shards.make_plan(batch_size, process_index, process_count)
  provider = registry.refresh(mixture_or_task_name)
  if not reads_streams(provider, use_packing):
    return seqio_shards.eval_dataset(
      mixture_or_task_name,
      task_feature_lengths,
      plan,
      seed=seed,
      use_packing=use_packing,
      split=split,
    )
  config = _stream_config(provider, split, task_feature_lengths, plan, seed, shuffle=False)
  n = len(plan.shards)
  zeros = [[0] * len(streams.POSITION)] * n
  totals = [[0] * len(stream_iterator.quality.COUNTERS)] * n
  ds = streams.process_dataset(config, list(plan.shards), zeros, totals)
  return ds.map(lambda b: {k: b[k] for k in streams.FEATURES})


class EvalBatches:
  """The first `steps` batches of an evaluation dataset, kept after the first evaluation when
  they are small: every evaluation of a run reads the same batches, and building the streams
  again each time would cost as much as the start-up did."""

  MAX_KEPT_BYTES = 256 << 20

  def __init__(self, dataset: tf.data.Dataset, steps: int):
    self._dataset, self._steps = dataset, steps
    self._kept: list | None = None
    self._reading: concurrent.futures.Future | None = None

  def start(self) -> None:
    """Reads the batches in a thread now, to keep if they are small: the first evaluation's
    data start-up then overlaps with what the trainer does before it."""
    if self._kept is None and self._reading is None and self._fits():
      executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="eval-batches")
      self._reading = executor.submit(lambda: list(self._read_and_keep()))
      executor.shutdown(wait=False)

  def _fits(self) -> bool:
    """Whether all `steps` batches fit the kept size (shapes known ahead, as the trainer's are)."""
    sizes = [
      spec.shape.num_elements() * spec.dtype.size
      for spec in self._dataset.element_spec.values()
      if spec.shape.is_fully_defined()
    ]
    return len(sizes) == len(self._dataset.element_spec) and sum(sizes) * self._steps <= (
      self.MAX_KEPT_BYTES
    )

  def __iter__(self):
    if self._reading is not None:
      reading, self._reading = self._reading, None
      batches = reading.result()
      if self._kept is None:  # too large to keep: this pass's batches were read anyway
        yield from batches
        return
    if self._kept is not None:
      yield from self._kept
      return
    yield from self._read_and_keep()

  def _read_and_keep(self):
    kept, size = [], 0
    batches = self._dataset.take(self._steps).as_numpy_iterator()
    while True:
      try:
        batch = next(batches)
      except StopIteration:
        break
      except tf.errors.OpError as e:
        raise stream_iterator.data_error(e, "validation") from None
      size += sum(v.nbytes for v in batch.values())
      if kept is not None:
        kept = kept if size <= self.MAX_KEPT_BYTES else None
        if kept is not None:
          kept.append(batch)
      yield batch
    self._kept = kept
