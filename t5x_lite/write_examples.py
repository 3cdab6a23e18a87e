"""Writes a run's model-ready examples once, on CPU hosts, for a train command without TensorFlow.

  python -m t5x_lite.write_examples --gin_file=models/t5_efficient_base.gin \
      --gin_file=runs/pretrain.gin --gin.C4_JSON_DIR="'/data/c4/en'" \
      --gin.MIXTURE_OR_TASK_NAME="'c4_json_span_corruption'" \
      --output_dir=/data/examples --steps=20000 [--eval_steps=N] [--workers=W]

then train with the same gin flags plus `--gin.ready_made.directory="'/data/examples'"`: the
accelerator hosts read numpy files (global example index = step x batch + row) and never import
TensorFlow or seqio. The examples are those the run itself would read, batch by batch: the task's
pipeline (the stream or seqio reader), its seed, batch size and feature lengths, as the gin files
set them. W worker processes split the batch rows between them as W training processes would;
each writes chunks of steps (renamed into place when complete) and the data position after each,
so a writer killed and run again continues after its last finished chunk. --steps larger than a
finished directory holds extends it. Format: t5x_lite/data/ready_made.py.
"""

from t5x_lite import quiet_startup  # noqa: F401  (first: hides native start-up noise)

# isort: split

import argparse
import datetime
import hashlib
import json
import shlex
import subprocess
import sys
import time
import uuid

from etils import epath
import gin
import numpy as np

from t5x_lite import files, gin_utils
from t5x_lite.data import batches, ready_made
from t5x_lite.errors import UserError, run_main

# Fields of examples.json that decide what the arrays hold: a rerun must agree on all of them.
_IDENTITY = (
  "task",
  "feature_lengths",
  "batch_size",
  "seed",
  "use_packing",
  "chunk_steps",
  "row_blocks",
  "vocab_size",
  "vocabulary_sha256",
  "data_settings",
  "eval_steps",
)


def _parse_args(argv):
  gin_files, bindings, rest = gin_utils.split_gin_flags(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(
    prog="python -m t5x_lite.write_examples", description=__doc__.splitlines()[0]
  )
  parser.add_argument("--output_dir", required=True, help="where the examples are written")
  parser.add_argument("--steps", type=int, required=True, help="training steps to write")
  parser.add_argument(
    "--eval_steps", type=int, default=None, help="validation batches (default: train.eval_steps)"
  )
  parser.add_argument("--workers", type=int, default=1, help="processes writing in parallel")
  parser.add_argument("--chunk_steps", type=int, default=50, help="steps per file")
  parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(rest)
  for flag in ("steps", "workers", "chunk_steps"):
    if getattr(args, flag) < 1:
      raise UserError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
  if args.eval_steps is not None and args.eval_steps < 0:
    raise UserError(f"--eval_steps must be >= 0, got {args.eval_steps}")
  if not gin_files:
    raise UserError("no --gin_file given: pass the gin files of the run the examples are for")
  return gin_files, bindings, args


def _run_settings() -> dict:
  """The data settings of the run the gin files describe (train.*, macros followed)."""
  bound = gin_utils.bound_value
  task = bound("train.mixture_or_task_name")
  lengths = bound("train.task_feature_lengths")
  if not isinstance(task, str) or not isinstance(lengths, dict):
    raise UserError("the gin files must set MIXTURE_OR_TASK_NAME and TASK_FEATURE_LENGTHS")
  return {
    "task": task,
    "feature_lengths": {k: int(v) for k, v in sorted(lengths.items())},
    "batch_size": int(bound("train.batch_size")),
    "seed": int(bound("train.seed", 0)),
    "use_packing": bool(bound("train.use_packing", False)),
    "eval_steps": int(bound("train.eval_steps", 10)),
  }


def feature_dtype(feature: str, vocab_size: int, lengths: dict) -> np.dtype:
  """The smallest dtype for a feature: token ids < vocab_size; weights, segment ids and
  positions < the longest feature length."""
  if "tokens" in feature:
    return ready_made.smallest_dtype(vocab_size - 1)
  return ready_made.smallest_dtype(max(lengths.values()))


def _describe(settings: dict, args) -> tuple[dict, bytes | None]:
  """examples.json for these settings (complete: False until every worker is done), and the
  task's SentencePiece model."""
  from t5x_lite import hf_files, resume_check, run_setup
  from t5x_lite.data import logical_shards, pipeline

  task, lengths, batch = settings["task"], settings["feature_lengths"], settings["batch_size"]
  try:  # the workers split each batch's rows as that many training processes would
    blocks = [logical_shards.make_plan(batch, w, args.workers).rows for w in range(args.workers)]
  except UserError as e:
    raise UserError(f"--workers={args.workers}: {e}") from None
  vocab_size = run_setup.task_vocab_size(task)
  try:
    spm = hf_files.sentencepiece_bytes_of(pipeline.get_vocabulary(task))
  except UserError:
    spm = None  # a vocabulary of another kind: the examples still hold its ids
  record = {
    "format": ready_made.FORMAT,
    "complete": False,
    **settings,
    "eval_steps": settings["eval_steps"] if args.eval_steps is None else args.eval_steps,
    "steps": args.steps,
    "chunk_steps": args.chunk_steps,
    "row_blocks": [[r.start, r.stop] for r in blocks],
    "vocab_size": vocab_size,
    "vocabulary_sha256": hashlib.sha256(spm).hexdigest() if spm else None,
    "data_settings": resume_check.data_settings(
      task, lengths, batch, settings["use_packing"], settings["seed"]
    ),
    "examples_id": uuid.uuid4().hex,
  }
  return record, spm


def _start_index(out: epath.Path, record: dict, spm: bytes | None) -> dict:
  """Writes examples.json (incomplete) or checks the one there describes the same examples."""
  path = out / ready_made.INDEX_FILE
  if path.exists():
    try:
      old = json.loads(path.read_text())
    except ValueError:
      old = {}
    changed = [k for k in _IDENTITY if old.get(k) != record[k]]
    if changed:
      raise UserError(
        f"{out} holds examples made with other settings ({', '.join(changed)}: "
        f"{', '.join(f'{old.get(k)!r} -> {record[k]!r}' for k in changed[:2])}); use another "
        f"--output_dir, or delete {out} to write these"
      )
    record = {
      **record,
      "examples_id": old["examples_id"],
      "steps": max(old["steps"], record["steps"]),
    }
  out.mkdir(parents=True, exist_ok=True)
  if spm:
    (out / ready_made.VOCABULARY_FILE).write_bytes(spm)
  _write_index(out, {**record, "complete": False})
  return record


def _write_index(out: epath.Path, record: dict) -> None:
  tmp = out / f".{ready_made.INDEX_FILE}.tmp"
  tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
  tmp.replace(out / ready_made.INDEX_FILE)


def _positions(out: epath.Path, rows: range) -> epath.Path:
  return out / ready_made.TRAIN / f"positions.rows{rows.start:05d}-{rows.stop:05d}"


def _chunk_done(out: epath.Path, chunk: int, rows: range, steps: int) -> bool:
  """Whether every feature file of a chunk is there with `steps` steps (names from chunk 0)."""
  names = [
    p.name for p in (out / ready_made.TRAIN).glob(f"*.chunk{chunk:05d}.rows{rows.start:05d}-*.npy")
  ]
  if not names:
    return False
  for name in names:
    with (out / ready_made.TRAIN / name).open("rb") as f:
      np.lib.format.read_magic(f)
      shape = np.lib.format.read_array_header_1_0(f)[0]
    if shape[0] != steps:
      return False
  return True


def _stacked(batches: list[dict], record: dict) -> dict[str, np.ndarray]:
  out = {}
  for feature in batches[0]:
    values = np.stack([b[feature] for b in batches])
    dtype = feature_dtype(feature, record["vocab_size"], record["feature_lengths"])
    if values.size and (values.min() < 0 or values.max() > np.iinfo(dtype).max):
      raise UserError(
        f"feature {feature} holds values outside {dtype.name}; is the vocabulary right?"
      )
    out[feature] = values.astype(dtype)
  return out


def write_worker(out: epath.Path, record: dict, worker: int, workers: int) -> None:
  """One worker's rows of every step, chunk by chunk, continuing after its last finished chunk."""
  from t5x_lite.data import pipeline

  rows = range(*record["row_blocks"][worker])
  steps, per_chunk = record["steps"], record["chunk_steps"]
  chunks = -(-steps // per_chunk)
  sizes = [min(per_chunk, steps - k * per_chunk) for k in range(chunks)]
  first = next((k for k in range(chunks) if not _chunk_done(out, k, rows, sizes[k])), chunks)
  position = _positions(out, rows) / f"after{first - 1:05d}"
  if first > 0 and not position.exists():
    first = 0  # no position to continue from: write the chunks again (the same examples)
  common = dict(seed=record["seed"], use_packing=record["use_packing"])
  lengths, batch, task = record["feature_lengths"], record["batch_size"], record["task"]
  if first < chunks:
    it = pipeline.train_iterator(
      task,
      lengths,
      batch,
      process_index=worker,
      process_count=workers,
      saved_data=str(position) if first else None,
      **common,
    )
    if first:
      it.restore(str(position))
    for k in range(first, chunks):
      arrays = _stacked([next(it) for _ in range(sizes[k])], record)
      for feature, array in arrays.items():
        ready_made.write_array(str(out), ready_made.train_file(feature, k, rows), array)
      if sizes[k] == per_chunk:  # where the next chunk starts
        it.save(str(_positions(out, rows) / f"after{k:05d}"))
        stale = _positions(out, rows) / f"after{k - 2:05d}"  # the last two are kept
        if k >= 2 and stale.exists():
          stale.rmtree()
      done = min((k + 1) * per_chunk, steps)
      print(f"worker {worker}: steps {done}/{steps} written", flush=True)
    it.close()
  if (
    record["eval_steps"]
    and not (out / ready_made.validation_file("decoder_target_tokens", rows)).exists()
  ):
    dataset = pipeline.eval_dataset(
      task, lengths, batch, process_index=worker, process_count=workers, **common
    )
    arrays = _stacked(list(pipeline.EvalBatches(dataset, record["eval_steps"])), record)
    if len(next(iter(arrays.values()))) < record["eval_steps"]:
      raise UserError(
        f"the validation split of {task!r} has fewer than {record['eval_steps']} batches; pass a smaller --eval_steps"
      )
    for feature, array in arrays.items():
      ready_made.write_array(str(out), ready_made.validation_file(feature, rows), array)


def _spawn_workers(argv: list[str], workers: int) -> None:
  """Runs the workers as processes of this command and waits for all; one failing stops all."""
  procs = [
    subprocess.Popen([sys.executable, "-m", "t5x_lite.write_examples", *argv, f"--worker={w}"])
    for w in range(workers)
  ]
  try:
    while any(p.poll() is None for p in procs):
      failed = [p for p in procs if p.returncode not in (None, 0)]
      if failed:
        raise UserError(
          f"a worker failed (exit {failed[0].returncode}, its message above); the finished files "
          f"are kept: run the same command again to continue"
        )
      time.sleep(0.5)
    failed = [p for p in procs if p.returncode != 0]
    if failed:
      raise UserError(
        f"a worker failed (exit {failed[0].returncode}, its message above); run the same "
        f"command again to continue"
      )
  finally:
    for p in procs:
      if p.poll() is None:
        p.terminate()


def _finish(out: epath.Path, record: dict) -> dict:
  """Checks every file is there, lists the features, marks the examples complete."""
  features = sorted(
    p.name.split(".chunk")[0] for p in (out / ready_made.TRAIN).glob("*.chunk00000.rows00000-*.npy")
  )
  record = {
    **record,
    "features": {
      f: {"dtype": feature_dtype(f, record["vocab_size"], record["feature_lengths"]).name}
      for f in features
    },
  }
  missing = [n for n in ready_made.file_names(record) if not (out / n).exists()]
  if missing:
    raise UserError(
      f"{len(missing)} files are missing in {out} (e.g. {missing[0]}); run the same command again"
    )
  record["complete"] = True
  record["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
  _write_index(out, record)
  return record


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  gin_files, bindings, args = _parse_args(argv)
  with quiet_startup.banners_hidden():
    batches.load_tasks()  # the seqio tasks: making examples needs TF
  from t5x_lite import config, training  # noqa: F401  (their configurables are in run gins)

  gin_utils.parse_gin(gin_files, bindings)
  out = files.path(args.output_dir)
  if args.worker is not None:  # one worker of a parent below: the parent wrote the index
    write_worker(
      out, json.loads((out / ready_made.INDEX_FILE).read_text()), args.worker, args.workers
    )
    return 0
  record, spm = _describe(_run_settings(), args)
  record["made_by"] = {
    "command": "python -m t5x_lite.write_examples " + shlex.join(argv),
    "gin_config": gin.config_str(),
  }
  record = _start_index(out, record, spm)
  started = time.perf_counter()
  if args.workers == 1:
    write_worker(out, record, 0, 1)
  else:
    _spawn_workers(argv, args.workers)
  record = _finish(out, record)
  split_dirs = (out / ready_made.TRAIN, out / ready_made.VALIDATION)
  size = sum(p.stat().length for d in split_dirs if d.exists() for p in d.glob("*.npy"))
  print(
    f"{record['steps']} steps of batch {record['batch_size']} ({record['task']}, "
    f"{record['feature_lengths']}) in {out}: {size / 1e6:.1f} MB, "
    f"{time.perf_counter() - started:.0f} s; train with "
    f"--gin.ready_made.directory=\"'{out}'\"",
    flush=True,
  )
  return 0


if __name__ == "__main__":
  run_main(main)
