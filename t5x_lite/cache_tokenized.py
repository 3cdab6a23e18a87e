"""Writes a pre-tokenized cache of a task (or of every task of a mixture), for faster training.

  python -m t5x_lite.cache_tokenized --gin_file=runs/c4.gin --gin.c4_json.data_dir=... \
      --cache_dir=/data/t5x_lite_cache [--splits=train,validation] [--num_shards=N] \
      [--worker_id=I --num_workers=W]

Then train with `--gin.tokenized_cache.cache_dir="'/data/t5x_lite_cache'"`: documents are read
as token ids and only span corruption runs per epoch. The task defaults to the gin files'
MIXTURE_OR_TASK_NAME. Workers split the shards between them (run W processes, any machines,
same cache_dir); each finished shard survives a crash, reruns skip it, and whichever worker
finds every shard present marks the cache complete. See `t5x_lite/data/tokenized_cache.py`.
"""

from t5x_lite import quiet_startup  # noqa: F401  (first: hides native start-up noise)

# isort: split

import argparse
import sys
import time

from t5x_lite.errors import UserError, run_main
from t5x_lite.gin_utils import parse_gin, required_macro, split_gin_flags
from t5x_lite.inspect_data import import_configurables


def main(argv=None) -> int:
  files, bindings, rest = split_gin_flags(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--task", help="task or mixture (default: MIXTURE_OR_TASK_NAME from gin)")
  parser.add_argument("--cache_dir", help="default: tokenized_cache.cache_dir from gin")
  parser.add_argument("--splits", default="train,validation")
  parser.add_argument(
    "--num_shards", type=int, help="output shards per split (default: one per input file)"
  )
  parser.add_argument("--worker_id", type=int, default=0)
  parser.add_argument("--num_workers", type=int, default=1)
  args = parser.parse_args(rest)
  for flag, value in (("--num_shards", args.num_shards), ("--num_workers", args.num_workers)):
    if value is not None and value < 1:
      raise UserError(f"{flag} must be a positive number, got {value}")

  import_configurables()
  parse_gin(files, bindings)
  from t5x_lite import run_setup
  from t5x_lite.data import registry, tokenized_cache

  name = args.task or required_macro("MIXTURE_OR_TASK_NAME")
  cache_dir = args.cache_dir or tokenized_cache.tokenized_cache_config()
  if not cache_dir:
    raise UserError("no cache directory: pass --cache_dir=... or bind tokenized_cache.cache_dir")
  provider = registry.refresh(name)
  splits = [s for s in args.splits.split(",") if s]
  run_setup.check_splits(name, provider, splits)
  run_setup.task_vocab_size(name)  # a vocabulary that cannot be read: one line, not seqio's
  start = time.perf_counter()
  complete = True
  for task in registry.leaf_tasks(provider):
    complete &= tokenized_cache.write_cache(
      task, cache_dir, splits, args.num_shards, args.worker_id, args.num_workers
    )
  state = "complete" if complete else "this worker's shards done; others still missing"
  print(f"{name}: cache in {cache_dir} {state} ({time.perf_counter() - start:.1f} s)", flush=True)
  return 0


if __name__ == "__main__":
  run_main(main)
