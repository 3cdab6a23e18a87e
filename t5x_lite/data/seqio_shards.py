"""One seqio pipeline per logical shard: how training data was read before the streams.

Any seqio task or mixture can be read this way (streams.py needs a StreamTask), and data
positions saved by earlier versions (a tf.data iterator checkpoint per shard) continue only this
way. Each shard is `get_dataset(..., shard_id=j, num_shards=count, seed=seed * count + j)`;
start-up and memory grow with the number of shards a process reads.
"""

from collections.abc import Mapping
import json
import os
import threading

import numpy as np
import seqio
import tensorflow as tf

from t5x_lite.data import logical_shards, registry, tokenized_cache
from t5x_lite.errors import UserError, first_line

# A fixed default seed keeps resumption exact: a restored iterator must rebuild the same graph
# (the stateless span-corruption seeds are baked into it).
DEFAULT_SEED = 0

# Whether a saved data position came from pipelines with tf.data autotuning (state.json of each
# shard; absent = on, as every earlier version ran them). Streams started here run without it:
# deleting an autotuned iterator waits out its model thread's sleep (up to a minute), and with one
# iterator per logical shard a finished run sat idle for minutes. But the setting changes the
# iterator's graph, so a position saved with it on restores only into a pipeline with it on: a
# run resumed from such a position keeps it. Evaluation streams never autotune.
AUTOTUNE_STATE_KEY = "autotune"


def get_dataset(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  split: str,
  batch_size: int,
  *,
  shard_id: int = 0,
  num_shards: int = 1,
  shuffle: bool = True,
  seed: int | None = None,
  use_packing: bool = False,
  repeat: bool = True,
  autotune: bool = True,
) -> tf.data.Dataset:
  """Batches of EncDecFeatureConverter features for one shard (host) of a task or mixture.

  `batch_size` is the global batch: each of `num_shards` shards yields batch_size // num_shards
  rows and reads a disjoint part of the data (seqio.ShardInfo: whole files when there are enough,
  else every num_shards-th example). seed=None means DEFAULT_SEED, so runs are reproducible.
  With `tokenized_cache.cache_dir` bound, tasks read their pre-tokenized cache from there.
  Features (int32): encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
  decoder_loss_weights, plus encoder/decoder_segment_ids and _positions when packed.
  `autotune=False` runs the pipeline without tf.data's autotuning (see AUTOTUNE_STATE_KEY).
  """
  _check_shards(task_feature_lengths, batch_size, shard_id, num_shards)
  provider = registry.refresh(mixture_or_task_name)
  lengths = {k: int(v) for k, v in task_feature_lengths.items()}
  cache_dir = tokenized_cache.tokenized_cache_config()
  if cache_dir:
    for task in registry.leaf_tasks(provider):
      tokenized_cache.use_cache(task, cache_dir, split)
  ds = provider.get_dataset(
    sequence_length=lengths,
    split=split,
    shuffle=shuffle,
    seed=DEFAULT_SEED if seed is None else seed,
    shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards) if num_shards > 1 else None,
    num_epochs=None if repeat else 1,
    use_cached=bool(cache_dir),
    **_shuffle_buffer(provider, shuffle, num_shards),
  )
  ds = seqio.EncDecFeatureConverter(pack=use_packing)(ds, lengths)
  ds = ds.batch(batch_size // num_shards, drop_remainder=True)
  ds = ds.map(
    lambda b: {k: tf.cast(v, tf.int32) for k, v in b.items()}, num_parallel_calls=tf.data.AUTOTUNE
  )
  options = tf.data.Options()
  options.deterministic = True  # Parallel maps, but always the same order.
  if not autotune:
    options.autotune.enabled = False
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _check_shards(lengths: Mapping[str, int], batch_size: int, shard_id: int, num_shards: int):
  if num_shards < 1 or not 0 <= shard_id < num_shards:
    raise UserError(f"shard_id={shard_id} is not in [0, num_shards={num_shards})")
  if batch_size % num_shards:
    raise UserError(f"global batch size {batch_size} is not divisible by {num_shards} data shards")
  missing = {"inputs", "targets"} - set(lengths)
  if missing:
    raise UserError(
      f"TASK_FEATURE_LENGTHS needs 'inputs' and 'targets' lengths, missing {sorted(missing)}"
    )


def _shuffle_buffer(provider, shuffle: bool, num_shards: int) -> dict:
  """The shards of one process shuffle as many examples together as one stream did: a buffer of
  the task's size in each of 64 shards would tokenize 64 times as much before the first step."""
  if (
    shuffle and num_shards > 1 and isinstance(provider, seqio.Task) and provider.shuffle_buffer_size
  ):
    return {"shuffle_buffer_size": -(-provider.shuffle_buffer_size // num_shards)}
  return {}


def _shard_datasets(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  split: str,
  plan: logical_shards.ShardPlan,
  seed: int | None,
  **kwargs,
) -> dict[int, tf.data.Dataset]:
  seed = DEFAULT_SEED if seed is None else seed
  return {
    shard: get_dataset(
      mixture_or_task_name,
      task_feature_lengths,
      split,
      plan.batch_size,
      shard_id=shard,
      num_shards=plan.count,
      seed=plan.shard_seed(seed, shard),
      **kwargs,
    )
    for shard in plan.shards
  }


def train_iterator(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  plan: logical_shards.ShardPlan,
  *,
  seed: int | None = None,
  use_packing: bool = False,
  autotune: bool = False,
) -> "DataIterator":
  """This process's logical shards of the training data, repeated and shuffled.

  `autotune`: False for a new stream; to resume a saved position, the value it was saved with
  (DataIterator.saved_autotune).
  """
  datasets = _shard_datasets(
    mixture_or_task_name,
    task_feature_lengths,
    "train",
    plan,
    seed,
    shuffle=True,
    use_packing=use_packing,
    autotune=autotune,
  )
  return DataIterator(datasets, autotune=autotune)


def eval_dataset(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  plan: logical_shards.ShardPlan,
  *,
  seed: int | None = None,
  use_packing: bool = False,
  split: str = "validation",
) -> tf.data.Dataset:
  """This process's rows of the (repeated, unshuffled) evaluation batches, as one dataset."""
  parts = tuple(
    _shard_datasets(
      mixture_or_task_name,
      task_feature_lengths,
      split,
      plan,
      seed,
      shuffle=False,
      use_packing=use_packing,
      autotune=False,
    ).values()
  )
  if len(parts) == 1:
    return parts[0]
  return tf.data.Dataset.zip(parts).map(
    lambda *bs: {k: tf.concat([b[k] for b in bs], 0) for k in bs[0]}
  )


class DataIterator:
  """Iterates numpy batches of one or more logical shards' datasets, their rows stacked in shard
  order; save/restore resume each shard at exactly its next batch.

  A directory holds one `shard_<j>/` per logical shard (a tf.train.Checkpoint of its iterator and
  the batches it gave), so processes write their own shards side by side, and a run on another
  process count restores the shards it now owns.
  """

  _PREFIX = "iterator"
  _STATE = "state.json"
  # Its position is the tf.data iterators' own state: it cannot be saved for a batch other
  # than the last one read, so the trainer reads no batch ahead of its step.
  reads_ahead = False

  def __init__(
    self, datasets: "tf.data.Dataset | Mapping[int, tf.data.Dataset]", *, autotune: bool = True
  ):
    """`autotune`: whether `datasets` were built with tf.data autotuning (recorded on save)."""
    if isinstance(datasets, tf.data.Dataset):
      datasets = {0: datasets}
    self._iterators = {shard: iter(ds) for shard, ds in sorted(datasets.items())}
    self._checkpoints = {
      shard: tf.train.Checkpoint(iterator=it) for shard, it in self._iterators.items()
    }
    self._autotune = autotune
    self._batches = 0
    self._digests: logical_shards.RowDigests | None = None

  def record_rows(self, path: str, first_row: int) -> None:
    """Appends the sha256 of each row to `path` (pipeline.row_digests_dir)."""
    self._digests = logical_shards.RowDigests(path, first_row)

  @property
  def shards(self) -> list[int]:
    return list(self._iterators)

  def start(self) -> None:
    """Nothing to start ahead: the iterators hold their position (StreamIterator.start)."""

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts, empty = [], []
    for shard, it in self._iterators.items():
      try:
        parts.append(next(it))
      except StopIteration:
        empty.append(shard)
    if empty and not parts:
      raise StopIteration  # no data at all (the caller names the corpus)
    if empty:
      raise UserError(
        f"logical data shards {empty} give no batch while others do: the data "
        f"holds too few documents to fill a batch in every logical shard; lower "
        f"logical_shards.count (a divisor of BATCH_SIZE)"
      )
    if len(parts) == 1:
      batch = {k: v.numpy() for k, v in parts[0].items()}
    else:
      batch = {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}
    if self._digests:
      self._digests.record(self._batches, batch)
    self._batches += 1
    return batch

  def state(self) -> dict[str, int]:
    """Cheap summary for logs: batches consumed since the start of the run."""
    return {"batches": self._batches}

  def close(self) -> None:
    """Deletes the shards' iterators all at once. Deleting an autotuned one (a resumed earlier
    run's, AUTOTUNE_STATE_KEY) waits for its autotuning thread's next wake-up, up to a minute, with
    the GIL released: in parallel threads these waits overlap instead of adding up."""
    holders = [[it] for it in self._iterators.values()]
    self._iterators, self._checkpoints = {}, {}
    threads = [threading.Thread(target=holder.clear) for holder in holders]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()

  @staticmethod
  def shard_directory(directory: str, shard: int) -> str:
    return os.path.join(directory, f"shard_{shard}")

  def save(self, directory: str) -> None:
    """Writes each shard to a temporary name and renames it, so a shard on disk is complete."""
    tf.io.gfile.makedirs(directory)
    for shard, checkpoint in self._checkpoints.items():
      final = self.shard_directory(directory, shard)
      tmp = final + ".tmp"
      for path in (tmp, final):
        if tf.io.gfile.exists(path):
          tf.io.gfile.rmtree(path)
      tf.io.gfile.makedirs(tmp)
      checkpoint.write(os.path.join(tmp, self._PREFIX))
      with tf.io.gfile.GFile(os.path.join(tmp, self._STATE), "w") as f:
        f.write(json.dumps({**self.state(), "shard": shard, AUTOTUNE_STATE_KEY: self._autotune}))
      tf.io.gfile.rename(tmp, final)

  @classmethod
  def saved_autotune(cls, directory: str) -> bool:
    """Whether the position saved in `directory` needs a pipeline with tf.data autotuning: yes
    unless its shards say otherwise (AUTOTUNE_STATE_KEY)."""
    settings = set()
    if tf.io.gfile.isdir(directory):
      for name in tf.io.gfile.listdir(directory):
        state_path = os.path.join(directory, name.rstrip("/"), cls._STATE)
        if name.startswith("shard_") and tf.io.gfile.exists(state_path):
          with tf.io.gfile.GFile(state_path) as f:
            settings.add(cls._autotuned(json.load(f)))
    return settings != {False}

  @staticmethod
  def _autotuned(state: dict) -> bool:
    """A shard's state.json: saved with autotuning unless it says not (earlier versions wrote
    no key and always autotuned)."""
    return bool(state.get(AUTOTUNE_STATE_KEY, True))

  def restore(self, directory: str) -> None:
    names = (
      [n.rstrip("/") for n in tf.io.gfile.listdir(directory)]
      if tf.io.gfile.isdir(directory)
      else []
    )
    if any(n.startswith("process_") for n in names) and not any(
      n.startswith("shard_") for n in names
    ):
      raise UserError(
        f"the data position in {directory} was saved per process by an older version, which "
        f"no other version can continue; pass --gin.train.allow_data_change=True to keep the "
        f"model and optimizer state and restart the data stream, or use another MODEL_DIR"
      )
    batches = set()
    for shard, checkpoint in self._checkpoints.items():
      path = self.shard_directory(directory, shard)
      state_path = os.path.join(path, self._STATE)
      if not tf.io.gfile.exists(state_path):
        raise UserError(
          f"no data iterator checkpoint for logical shard {shard} in {directory} "
          f"(missing shard_{shard}/{self._STATE}); was logical_shards.count changed?"
        )
      with tf.io.gfile.GFile(state_path) as f:
        saved = json.load(f)
      if self._autotuned(saved) != self._autotune:
        raise UserError(
          f"the data position in {path} was saved with tf.data autotuning "
          f"{'on' if self._autotuned(saved) else 'off'}, this pipeline has it "
          f"{'on' if self._autotune else 'off'}: build it with "
          f"autotune=DataIterator.saved_autotune({directory!r})"
        )
      try:
        checkpoint.read(os.path.join(path, self._PREFIX)).assert_consumed()
      except (tf.errors.OpError, AssertionError, ValueError) as e:
        raise UserError(
          f"cannot restore the data iterator from {path}: "
          f"{first_line(e, limit=None)} (was the data config changed?)"
        ) from None
      batches.add(int(saved["batches"]))
    if len(batches) > 1:
      raise UserError(
        f"the logical shards in {directory} were saved at different positions "
        f"({sorted(batches)} batches); the data state is damaged: use an earlier "
        f"checkpoint or --gin.train.allow_data_change=True"
      )
    self._batches = batches.pop()
