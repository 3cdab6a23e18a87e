"""The trainer's input pipeline: a task's examples as batched, sharded, checkpointable features.

  ds = get_dataset("quickstart_span_corruption", {"inputs": 512, "targets": 114}, "train", 128,
                   shard_id=jax.process_index(), num_shards=jax.process_count())
  it = DataIterator(ds)
  batch = next(it)          # dict of int32 numpy arrays [batch_size // num_shards, length]
  it.save(dir); it.restore(dir)   # exact position, via tf.train.Checkpoint
"""

import json
import os
from typing import Mapping, Optional

import gin
import numpy as np
import seqio
import tensorflow as tf

from t5x_lite.data import registry, tokenized_cache
from t5x_lite.errors import UserError, first_line

# A fixed default seed keeps resumption exact: a restored iterator must rebuild the same graph
# (the stateless span-corruption seeds are baked into it).
DEFAULT_SEED = 0


def hide_accelerators_from_tf() -> None:
  """Keeps TF (only used for data) off GPUs so JAX owns them."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF devices were already initialised; nothing left to change.
    pass


hide_accelerators_from_tf()


@gin.configurable(denylist=["shard_id", "num_shards"])
def get_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str,
                batch_size: int, *, shard_id: int = 0, num_shards: int = 1, shuffle: bool = True,
                seed: Optional[int] = None, use_packing: bool = False,
                repeat: bool = True) -> tf.data.Dataset:
  """Batches of EncDecFeatureConverter features for one shard (host) of a task or mixture.

  `batch_size` is the global batch: each of `num_shards` shards yields batch_size // num_shards
  rows and reads a disjoint part of the data (seqio.ShardInfo: whole files when there are enough,
  else every num_shards-th example). seed=None means DEFAULT_SEED, so runs are reproducible.
  With `tokenized_cache.cache_dir` bound, tasks read their pre-tokenized cache from there.
  Features (int32): encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
  decoder_loss_weights, plus encoder/decoder_segment_ids and _positions when packed.
  """
  if num_shards < 1 or not 0 <= shard_id < num_shards:
    raise UserError(f"shard_id={shard_id} is not in [0, num_shards={num_shards})")
  if batch_size % num_shards:
    raise UserError(f"global batch size {batch_size} is not divisible by {num_shards} data shards")
  missing = {"inputs", "targets"} - set(task_feature_lengths)
  if missing:
    raise UserError(f"TASK_FEATURE_LENGTHS needs 'inputs' and 'targets' lengths, missing {sorted(missing)}")
  provider = registry.refresh(mixture_or_task_name)
  seed = DEFAULT_SEED if seed is None else seed
  shard_info = seqio.ShardInfo(index=shard_id, num_shards=num_shards) if num_shards > 1 else None
  lengths = {k: int(v) for k, v in task_feature_lengths.items()}
  cache_dir = tokenized_cache.tokenized_cache_config()
  if cache_dir:
    for task in registry.leaf_tasks(provider):
      tokenized_cache.use_cache(task, cache_dir, split)
  ds = provider.get_dataset(sequence_length=lengths, split=split, shuffle=shuffle, seed=seed,
                            shard_info=shard_info, num_epochs=None if repeat else 1,
                            use_cached=bool(cache_dir))
  ds = seqio.EncDecFeatureConverter(pack=use_packing)(ds, lengths)
  ds = ds.batch(batch_size // num_shards, drop_remainder=True)
  ds = ds.map(lambda b: {k: tf.cast(v, tf.int32) for k, v in b.items()},
              num_parallel_calls=tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True  # Parallel maps, but always the same order.
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def get_vocabulary(mixture_or_task_name: str) -> seqio.Vocabulary:
  """The (shared inputs/targets) vocabulary of a task or mixture, from the current gin config."""
  provider = registry.refresh(mixture_or_task_name)
  return provider.output_features["targets"].vocabulary


class DataIterator:
  """Iterates numpy batches of a dataset; save/restore resume at exactly the next batch.

  Each process saves its own iterator: give every process its own directory.
  """

  _PREFIX = "iterator"
  _STATE = "state.json"

  def __init__(self, dataset: tf.data.Dataset):
    self._iterator = iter(dataset)
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)
    self._batches = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    self._batches += 1
    return {k: v.numpy() for k, v in batch.items()}

  def state(self) -> dict[str, int]:
    """Cheap summary for logs: batches consumed since the start of the run."""
    return {"batches": self._batches}

  def save(self, directory: str) -> None:
    tf.io.gfile.makedirs(directory)
    self._checkpoint.write(os.path.join(directory, self._PREFIX))
    with tf.io.gfile.GFile(os.path.join(directory, self._STATE), "w") as f:
      f.write(json.dumps(self.state()))

  def restore(self, directory: str) -> None:
    state_path = os.path.join(directory, self._STATE)
    if not tf.io.gfile.exists(state_path):
      raise UserError(f"no data iterator checkpoint in {directory} (missing {self._STATE})")
    try:
      self._checkpoint.read(os.path.join(directory, self._PREFIX)).assert_consumed()
    except (tf.errors.OpError, AssertionError, ValueError) as e:
      raise UserError(f"cannot restore the data iterator from {directory}: "
                      f"{first_line(e, limit=None)} (was the data config changed?)") from None
    with tf.io.gfile.GFile(state_path) as f:
      self._batches = int(json.load(f)["batches"])
