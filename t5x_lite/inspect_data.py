"""Prints the examples a training run would read, from the same gin files as training.

  python -m t5x_lite.inspect_data --gin_file=runs/quickstart.gin --num_examples=3 --decode
  python -m t5x_lite.inspect_data --gin_file=... --stats   # document counts, skipped, bad bytes
  (for fine-tuning files: examples, malformed rows skipped, blank lines)

Reads MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS and the task/vocabulary bindings. Prints one JSON
object per line, {"inputs": [...], "targets": [...]}: ids after span corruption and EOS, before
packing; --decode adds "inputs_text"/"targets_text" with sentinels shown as <extra_id_N>.
"""

from t5x_lite import quiet_startup  # noqa: F401  (first: hides native start-up noise)

# isort: split

import argparse
import itertools
import json
import sys

from t5x_lite.errors import UserError, run_main
from t5x_lite.gin_utils import parse_gin, required_macro, split_gin_flags


def import_configurables() -> None:
  """Registers every configurable a run gin binds: the tasks and data ones, and training's (the
  run gins set train.*, the model and the optimizer too)."""
  from t5x_lite import training  # noqa: F401
  from t5x_lite.data import pipeline  # noqa: F401
  import t5x_lite.tasks  # noqa: F401


def main(argv=None) -> int:
  files, bindings, rest = split_gin_flags(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--split", default="train")
  parser.add_argument("--num_examples", type=int, default=5)
  parser.add_argument("--decode", action="store_true", help="add the decoded text")
  parser.add_argument(
    "--shuffle",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="shuffle as training does (default)",
  )
  parser.add_argument("--seed", type=int, default=None, help="default: the pipeline's default seed")
  parser.add_argument(
    "--stats",
    action="store_true",
    help="count documents, empty ones skipped and invalid UTF-8 instead",
  )
  args = parser.parse_args(rest)
  if args.num_examples < 0:
    raise UserError(f"--num_examples must be 0 or more, got {args.num_examples}")

  import_configurables()
  parse_gin(files, bindings)
  from t5x_lite import run_setup
  from t5x_lite.data import pipeline, registry, seq2seq_sources, sources

  name = required_macro("MIXTURE_OR_TASK_NAME")
  provider = registry.refresh(name)
  run_setup.check_splits(name, provider, [args.split])
  if args.stats:
    for task in registry.leaf_tasks(provider):
      if isinstance(task.source, seq2seq_sources.Seq2SeqFiles):  # rows kept and skipped
        stats = seq2seq_sources.row_stats(task.source, args.split)
      elif isinstance(task.source, sources.CorpusFiles):
        stats = sources.document_stats(task.source, args.split)
      else:
        raise UserError(f"--stats reads local file corpora; task {task.name!r} is not one")
      print(json.dumps({"task": task.name, "split": args.split, **stats}), flush=True)
    return 0

  lengths = dict(required_macro("TASK_FEATURE_LENGTHS"))
  for task in registry.leaf_tasks(provider):
    task.source.list_shards(args.split)  # files that are not there: named before the vocabulary
  run_setup.task_vocab_size(name)  # a vocabulary that cannot be read: one line, not seqio's
  seed = pipeline.DEFAULT_SEED if args.seed is None else args.seed
  ds = provider.get_dataset(
    sequence_length=lengths, split=args.split, shuffle=args.shuffle, seed=seed, num_epochs=1
  )
  vocab = pipeline.get_vocabulary(name)
  for ex in itertools.islice(ds.as_numpy_iterator(), args.num_examples):
    out = {"inputs": ex["inputs"].tolist(), "targets": ex["targets"].tolist()}
    if args.decode:
      out["inputs_text"] = vocab.decode(out["inputs"])
      out["targets_text"] = vocab.decode(out["targets"])
    print(json.dumps(out, ensure_ascii=False), flush=True)
  return 0


if __name__ == "__main__":
  run_main(main)
