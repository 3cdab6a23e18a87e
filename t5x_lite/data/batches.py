"""Where the training process gets its batches: the front door of the data side, without TF.

Three kinds of source, all driven the same way by the loop (next batch, its position, save and
restore; see stream_iterator.py and indexed.py):
  synthetic    MIXTURE_OR_TASK_NAME='synthetic': random span-corruption batches (synthetic.py)
  ready-made   ready_made.directory set: examples written once by write_examples (ready_made.py)
  task         a seqio task or mixture, read by its pipeline (pipeline.py: TensorFlow and seqio)
Only the third imports TensorFlow and seqio, and only when it is used: a run on synthetic or
ready-made data never loads them (an accelerator host needs neither).
"""

from collections.abc import Mapping

from t5x_lite.data import logical_shards, ready_made, synthetic
from t5x_lite.errors import UserError

SYNTHETIC, READY_MADE, TASK = "synthetic", "ready-made", "task"


def source_kind(mixture_or_task_name: str) -> str:
  if ready_made.ready_made_config():
    return READY_MADE
  if mixture_or_task_name == synthetic.TASK_NAME:
    return SYNTHETIC
  return TASK


def needs_tasks(mixture_or_task_name: str) -> bool:
  """Whether the run's data is read by a seqio task's pipeline (TensorFlow, seqio, the tasks)."""
  return source_kind(mixture_or_task_name) == TASK


def load_tasks() -> None:
  """Imports the seqio tasks (every module of tasks/) and the pipelines that read them, with
  TensorFlow; before gin is parsed, since they register gin configurables."""
  import t5x_lite.tasks  # noqa: F401  (and the pipeline that reads them)


def _index() -> ready_made.Index:
  return ready_made.read_index(ready_made.ready_made_config())


def _process_rows(batch_size: int, process_index: int, process_count: int, batch_sharding):
  """This process's rows of each global batch: one contiguous block per process."""
  if batch_size % process_count:
    raise UserError(
      f"BATCH_SIZE={batch_size} does not split over {process_count} processes; use a batch size "
      f"divisible by the process count"
    )
  plan = logical_shards.make_plan(batch_size, process_index, process_count, count=process_count)
  if batch_sharding is not None:
    logical_shards.check_process_rows(plan, batch_sharding)
  return plan.rows


def vocab_size(mixture_or_task_name: str, model_vocab_size: int) -> int | None:
  """Ids of the run's vocabulary, for the TF-free sources (None: ask the task's pipeline)."""
  kind = source_kind(mixture_or_task_name)
  if kind == SYNTHETIC:
    return synthetic.vocab_size(model_vocab_size)
  if kind == READY_MADE:
    return _index().record["vocab_size"]
  return None


def sentencepiece_path(mixture_or_task_name: str) -> str | None:
  """The SentencePiece model shipped with ready-made examples (None for other sources)."""
  if source_kind(mixture_or_task_name) == READY_MADE:
    return _index().vocabulary_path()
  return None


def describe(mixture_or_task_name: str) -> str | None:
  """A console line naming the source when it is not the task's own pipeline."""
  kind = source_kind(mixture_or_task_name)
  if kind == READY_MADE:
    index = _index()
    return (
      f"reading ready-made examples of task {index.record['task']!r} from {index.directory} "
      f"({index.steps} steps of batch {index.batch_size})"
    )
  if kind == SYNTHETIC:
    return "training on synthetic data (random tokens in the span-corruption layout)"
  from t5x_lite.data import tokenized_cache

  if tokenized_cache.tokenized_cache_config():
    return (
      f"reading pre-tokenized data from the cache in {tokenized_cache.tokenized_cache_config()}"
    )
  return None


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
  end_step: int | None = None,
  model_vocab_size: int | None = None,
):
  """This process's rows of the training batches, from the run's source (see the docstring)."""
  kind = source_kind(mixture_or_task_name)
  if kind == TASK:
    from t5x_lite.data import pipeline

    return pipeline.train_iterator(
      mixture_or_task_name,
      task_feature_lengths,
      batch_size,
      process_index=process_index,
      process_count=process_count,
      seed=seed,
      use_packing=use_packing,
      batch_sharding=batch_sharding,
      saved_data=saved_data,
    )
  if use_packing and kind == SYNTHETIC:
    raise UserError("synthetic data is not packed; set train.use_packing=False")
  rows = _process_rows(batch_size, process_index, process_count, batch_sharding)
  lengths = {k: int(v) for k, v in task_feature_lengths.items()}
  if kind == SYNTHETIC:
    return synthetic.train_batches(
      lengths, batch_size, rows, seed or 0, synthetic.vocab_size(model_vocab_size), process_index
    )
  index = _index()
  ready_made.check_run(index, mixture_or_task_name, lengths, batch_size, end_step or 0)
  return ready_made.train_batches(index, batch_size, rows, process_index)


def eval_batches(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  batch_size: int,
  steps: int,
  *,
  process_index: int = 0,
  process_count: int = 1,
  seed: int | None = None,
  use_packing: bool = False,
  model_vocab_size: int | None = None,
):
  """This process's rows of the `steps` evaluation batches (an iterable with `start()`)."""
  kind = source_kind(mixture_or_task_name)
  if kind == TASK:
    from t5x_lite.data import pipeline

    dataset = pipeline.eval_dataset(
      mixture_or_task_name,
      task_feature_lengths,
      batch_size,
      process_index=process_index,
      process_count=process_count,
      seed=seed,
      use_packing=use_packing,
    )
    return pipeline.EvalBatches(dataset, steps)
  rows = _process_rows(batch_size, process_index, process_count, None)
  lengths = {k: int(v) for k, v in task_feature_lengths.items()}
  if kind == SYNTHETIC:
    num_ids = synthetic.vocab_size(model_vocab_size)
    return synthetic.eval_batches(lengths, batch_size, rows, seed or 0, num_ids, steps)
  return ready_made.eval_batches(_index(), batch_size, rows, steps)


def data_settings(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  batch_size: int,
  seed: int,
  model_vocab_size: int | None = None,
) -> dict:
  """What defines a TF-free source's batches, compared on resume like a task's data settings."""
  kind = source_kind(mixture_or_task_name)
  lengths = {k: int(v) for k, v in sorted(task_feature_lengths.items())}
  if kind == READY_MADE:
    record = _index().record
    # What made the files, plus their identity: other files are other data. Any batch size
    # reads the same sequence of examples, so the run's own is what a resume compares.
    return {
      **record["data_settings"],
      "batch_size": batch_size,
      "source": "ready-made examples",
      "examples_id": record["examples_id"],
    }
  from t5x_lite.data import span_lengths

  density, mean_span = span_lengths.span_corruption_config()
  return {
    "mixture_or_task_name": synthetic.TASK_NAME,
    "task_feature_lengths": lengths,
    "batch_size": batch_size,
    "use_packing": False,
    "seed": seed,
    "logical_shards": None,  # none: any process count reads the same batches
    "vocabulary": f"synthetic {synthetic.vocab_size(model_vocab_size)}",
    "noise_density": density,
    "mean_noise_span_length": mean_span,
    "source": "synthetic",
  }
