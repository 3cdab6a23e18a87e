"""Pre-tokenized caches: tokenize a task's documents once, then train from the token ids.

Tokenization is the costliest step of the span-corruption pipeline (SentencePiece, about a
microsecond per token); everything after it (chunks, masks, sentinels) is redone every epoch.
A cache holds each task's output just before its `seqio.CacheDatasetPlaceholder`, in seqio's
own cache layout, so `Task.get_dataset(use_cached=True)` reads it (as T5X does):

  CACHE_DIR/TASK/{split}.tfrecord-00003-of-00016   tf.train.Example{"targets": int64 list}
  CACHE_DIR/TASK/info.{split}.json                  features, num_shards, our vocabulary digest
  CACHE_DIR/TASK/stats.{split}.json                 examples and tokens
  CACHE_DIR/TASK/COMPLETED                          written last, when every split is done

Output shard i is input shard i of the source (a file-based source gives one output shard per
file), each written to a temporary name and renamed, so a killed writer loses nothing and a
rerun (or other workers, `--worker_id/--num_workers`) skips the shards that exist.
"""

from collections.abc import Sequence
import hashlib
import json
import os

import gin
import numpy as np
import seqio
import tensorflow as tf

from t5x_lite import commands, paths, progress
from t5x_lite.errors import UserError

_SHARD = "{split}.tfrecord-{index:05d}-of-{num_shards:05d}"
_SHARD_STATS = "{split}.stats-{index:05d}-of-{num_shards:05d}.json"
_INFO = "info.{split}.json"
_STATS = "stats.{split}.json"
_COMPLETED = "COMPLETED"


@gin.configurable("tokenized_cache")
def tokenized_cache_config(cache_dir: str | None = None) -> str | None:
  """Directory of pre-tokenized caches; when set, training reads tasks from it."""
  return cache_dir


def task_cache_dir(cache_dir: str, task_name: str) -> str:
  return os.path.join(cache_dir, seqio.utils.get_task_dir_from_name(task_name))


def vocabulary_digest(task: seqio.Task) -> str:
  """What a cache's token ids depend on besides the source: the tokenizer's model bytes."""
  vocab = task.output_features["targets"].vocabulary
  model = getattr(vocab, "sp_model", None)
  data = model if model is not None else repr((type(vocab).__name__, vocab.vocab_size)).encode()
  return hashlib.sha256(data).hexdigest()[:16]


def _example(tokens) -> bytes:
  feature = tf.train.Feature(int64_list=tf.train.Int64List(value=tokens))
  return tf.train.Example(
    features=tf.train.Features(feature={"targets": feature})
  ).SerializeToString()


def _num_source_shards(task: seqio.Task, split: str) -> int:
  source = task.source
  # Corpus files split by lines when there are more shards than files, but a cache shard per
  # input file is what makes the trainer's streams cheap; other sources (TFDS) shard by examples.
  if source.supports_arbitrary_sharding and not isinstance(source, seqio.FileDataSource):
    return 0
  return len(source.list_shards(split))


def _shard_paths(out_dir: str, split: str, index: int, num_shards: int) -> tuple[str, str]:
  """(cache file, its stats file) of one output shard."""
  names = (_SHARD, _SHARD_STATS)
  return tuple(
    os.path.join(out_dir, n.format(split=split, index=index, num_shards=num_shards)) for n in names
  )


def _read_json(path: str) -> dict:
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _write_json(path: str, value: dict) -> None:
  with tf.io.gfile.GFile(path, "w") as f:
    json.dump(value, f)


_NO_STATS = {"examples": 0, "targets_tokens": 0, "targets_max_tokens": 0}


def _merged(a: dict, b: dict) -> dict:
  """Stats of two disjoint sets of documents together (seqio's cache stats keys)."""
  return {
    "examples": a["examples"] + b["examples"],
    "targets_tokens": a["targets_tokens"] + b["targets_tokens"],
    "targets_max_tokens": max(a["targets_max_tokens"], b["targets_max_tokens"]),
  }


def _shard_written(out_dir: str, split: str, index: int, num_shards: int) -> bool:
  """A shard's stats file is written last, once its cache file is in place; a cache file deleted
  since then makes the shard missing again (a rerun writes it anew)."""
  return all(tf.io.gfile.exists(p) for p in _shard_paths(out_dir, split, index, num_shards))


def write_shard(task: seqio.Task, split: str, index: int, num_shards: int, out_dir: str) -> dict:
  """Tokenizes input shard `index` of `num_shards` into one cache file; returns its stats."""
  path, stats_path = _shard_paths(out_dir, split, index, num_shards)
  if _shard_written(out_dir, split, index, num_shards):
    return _read_json(stats_path)
  ds = task.source.get_dataset(
    split=split, shuffle=False, shard_info=seqio.ShardInfo(index=index, num_shards=num_shards)
  )
  ds = task.preprocess_precache(ds, seed=None)
  # Batched, so Python handles one ragged batch per step rather than one tensor per document.
  ds = ds.map(lambda ex: ex["targets"], num_parallel_calls=tf.data.AUTOTUNE).ragged_batch(256)
  ds = ds.map(lambda rt: (rt.flat_values, rt.row_splits)).prefetch(tf.data.AUTOTUNE)
  stats = _NO_STATS
  tmp = path + ".incomplete"
  with tf.io.TFRecordWriter(tmp) as writer:
    for values, splits in ds.as_numpy_iterator():
      for begin, end in zip(splits[:-1], splits[1:]):
        writer.write(_example(values[begin:end]))
      lengths = np.diff(splits)
      stats = _merged(
        stats,
        {
          "examples": int(lengths.size),
          "targets_tokens": int(lengths.sum()),
          "targets_max_tokens": int(lengths.max()),
        },
      )
  tf.io.gfile.rename(tmp, path, overwrite=True)
  _write_json(stats_path, stats)
  return stats


def _shard_ranges(indices: Sequence[int]) -> str:
  """[0, 1, 2, 5] -> '1-3, 6' (1-based, as the progress lines count shards)."""
  ranges, start = [], None
  for i, index in enumerate(indices):
    if start is None:
      start = index
    if i + 1 == len(indices) or indices[i + 1] != index + 1:
      ranges.append(f"{start + 1}" if start == index else f"{start + 1}-{index + 1}")
      start = None
  return ", ".join(ranges)


def write_cache(
  task: seqio.Task,
  cache_dir: str,
  splits: Sequence[str],
  num_shards: int | None = None,
  worker_id: int = 0,
  num_workers: int = 1,
  log=print,
) -> bool:
  """Writes this worker's shards of each split; finishes the cache when all shards exist.

  Returns True when the cache is complete.
  """
  if not 0 <= worker_id < num_workers:
    raise UserError(f"worker_id={worker_id} is not in [0, num_workers={num_workers})")
  out_dir = task_cache_dir(cache_dir, task.name)
  paths.make_dirs(out_dir, "cache directory")
  complete = True
  for split in splits:
    complete &= _write_split(task, split, out_dir, num_shards, worker_id, num_workers, log)
  if complete:
    _write_json(os.path.join(out_dir, _COMPLETED), {"splits": list(splits)})
  return complete


def _write_split(task, split, out_dir, num_shards, worker_id, num_workers, log) -> bool:
  """This worker's shards of one split; the split's info and stats once all shards exist.
  Returns whether the split is complete."""
  digest = vocabulary_digest(task)
  info_path = os.path.join(out_dir, _INFO.format(split=split))
  if tf.io.gfile.exists(info_path) and _read_json(info_path).get("vocabulary_digest") != digest:
    # Its shards would be skipped as written and the cache marked complete again.
    raise UserError(
      f"the tokenized cache in {out_dir} was written with another vocabulary than task "
      f"{task.name!r} now uses; delete {out_dir} first, or write to another --cache_dir"
    )
  available = _num_source_shards(task, split)
  n = num_shards or available or 64
  if available and n > available:
    raise UserError(
      f"task {task.name!r} split {split!r} has {available} input files; "
      f"--num_shards={n} would leave shards empty (use at most {available})"
    )
  totals, done = _NO_STATS, 0
  mine = [i for i in range(n) if i % num_workers == worker_id]
  skipped = [i for i in mine if _shard_written(out_dir, split, i, n)]
  if skipped:
    log(
      f"{task.name} {split}: {len(skipped)} of this worker's {len(mine)} shards are already "
      f"written, skipping {_shard_ranges(skipped)} (of {n})"
    )
  bar = progress.Progress(
    f"{task.name} {split}", len(mine) - len(skipped), "shards", every_s=0, log=log
  )
  for index in range(n):
    if index % num_workers == worker_id:
      stats = write_shard(task, split, index, n, out_dir)
      if index not in skipped:
        bar.advance(
          1,
          f"shard {index + 1}/{n}: {stats['examples']} documents, {stats['targets_tokens']} tokens",
        )
    elif _shard_written(out_dir, split, index, n):
      stats = _read_json(_shard_paths(out_dir, split, index, n)[1])
    else:
      continue  # Another worker's shard, not written yet.
    done += 1
    totals = _merged(totals, stats)
  if done < n:
    return False
  _write_json(
    info_path,
    {
      "features": {"targets": {"shape": [None], "dtype": "int32"}},
      "num_shards": n,
      "seqio_version": seqio.__version__,
      "vocabulary_digest": digest,
    },
  )
  _write_json(os.path.join(out_dir, _STATS.format(split=split)), totals)
  return True


def cache_files(task: seqio.Task, cache_dir: str, split: str) -> list[str]:
  """The cache files of a split (after `use_cache` accepted the cache)."""
  out_dir = task_cache_dir(cache_dir, task.name)
  n = _read_json(os.path.join(out_dir, _INFO.format(split=split)))["num_shards"]
  return [_shard_paths(out_dir, split, i, n)[0] for i in range(n)]


def _lost_shards(out_dir: str, split: str, num_shards: int) -> list[str]:
  """The cache files of a split, as its info lists them, that are gone or cut to nothing.

  seqio reads whatever files match, so without this a lost shard would silently drop its part of
  the data (or fail with a traceback when none is left). Sizes are checked on local disks only,
  where that is cheap; an empty file is fine for a shard whose inputs held no documents.
  """
  present = set(tf.io.gfile.listdir(out_dir))
  lost = []
  for index in range(num_shards):
    path, stats_path = _shard_paths(out_dir, split, index, num_shards)
    name = os.path.basename(path)
    if name not in present:
      lost.append(name)
    elif (
      not paths.is_remote(path)
      and os.path.getsize(path) == 0
      and (not os.path.exists(stats_path) or _read_json(stats_path)["examples"])
    ):
      lost.append(name)
  return lost


def use_cache(task: seqio.Task, cache_dir: str, split: str) -> None:
  """Points seqio at `cache_dir` for `task`, failing in one line if that cache cannot serve."""
  out_dir = task_cache_dir(cache_dir, task.name)
  command = (
    f"`{commands.python()} -m t5x_lite.cache_tokenized --task={task.name} "
    f"--cache_dir={cache_dir}` (same gin files)"
  )
  unset = "or unset tokenized_cache.cache_dir"
  if not tf.io.gfile.exists(os.path.join(out_dir, _COMPLETED)):
    raise UserError(
      f"no completed tokenized cache of task {task.name!r} in {out_dir}; write it with "
      f"{command}, {unset}"
    )
  info_path = os.path.join(out_dir, _INFO.format(split=split))
  if not tf.io.gfile.exists(info_path):
    raise UserError(
      f"the tokenized cache in {out_dir} has no split {split!r}; write it with {command}, {unset}"
    )
  info = _read_json(info_path)
  if info.get("vocabulary_digest") != vocabulary_digest(task):
    raise UserError(
      f"the tokenized cache in {out_dir} was written with another vocabulary than task "
      f"{task.name!r} now uses; delete {out_dir} and write it again with {command}, {unset}"
    )
  lost = _lost_shards(out_dir, split, info["num_shards"])
  if lost:
    more = f" (and {len(lost) - 1} more of its {info['num_shards']})" if len(lost) > 1 else ""
    raise UserError(
      f"the tokenized cache in {out_dir} is incomplete: {lost[0]}{more} is missing or empty; "
      f"rewrite the missing shards with {command}, {unset}"
    )
  if cache_dir not in seqio.utils.get_global_cache_dirs():
    seqio.add_global_cache_dirs([cache_dir])
