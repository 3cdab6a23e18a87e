"""Throughput of the span-corruption pipeline (examples/s at inputs 512 / targets 114).

  python benchmarks/data_pipeline.py [--examples=3000] [--cores=1,2] \
      [--t5_python=/path/to/venv-with-t5/bin/python]

Stages, each pinned to 1 and 2 cores (`taskset` where available, plus a tf.data private
thread pool of that size):
  masking    pre-tokenized documents in memory -> chunk, concat/split, mask, EOS
  t5         the same documents through the original `t5.data.preprocessors.span_corruption`
             (+ seqio's append_eos_after_trim), run by `--t5_python`: an interpreter of a
             separate environment with the public `t5` package (this project does not depend
             on it). Skipped without --t5_python.
  tokenized  the quickstart task end to end: JSONL files -> tokenize -> span corruption
  cached     the same task from its pre-tokenized cache (`t5x_lite.cache_tokenized`, written
             once before the runs and timed on its own): token ids -> span corruption
  trainer    the quickstart task through the trainer's own input pipeline for one process
             (`pipeline.train_iterator`: every logical shard of the global batch, shuffled,
             feature-converted, stacked); its start-up (building the pipelines) is reported apart
Both masking stages read the same pre-tokenized documents from one .npz file. Each measurement
runs in its own process; prints one JSON line per run and a markdown table, then the cores
needed to feed the `--feed` rate (default: t5-efficient-tiny at 100 steps/s x batch 128).
"""

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

LENGTHS = {"inputs": 512, "targets": 114}
BATCH_SIZE = 128  # The recipe's batch; examples are consumed in padded batches of this size.
QUICKSTART_TASK = "quickstart_span_corruption"


def _cache_dir(docs_path: str) -> str:
  return os.path.join(os.path.dirname(docs_path), "cache")


def write_cache(docs_path: str, env: dict) -> dict:
  """Tokenizes the quickstart corpus into a pre-tokenized cache (one process, all its cores)."""
  start = time.perf_counter()
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "t5x_lite.cache_tokenized",
      "--gin_file=runs/quickstart.gin",
      "--splits=train",
      f"--cache_dir={_cache_dir(docs_path)}",
    ],
    capture_output=True,
    text=True,
    env=env,
  )
  if out.returncode:
    raise RuntimeError(out.stderr[-2000:])
  seconds = time.perf_counter() - start
  # The CLI ends with "... (12.3 s)": its own time, without interpreter and import start-up.
  writing = float(re.search(r"\(([\d.]+) s\)\s*$", out.stdout).group(1))
  stats_path = os.path.join(_cache_dir(docs_path), QUICKSTART_TASK, "stats.train.json")
  with open(stats_path) as f:
    stats = json.load(f)
  return {
    "stage": "write cache",
    "documents": stats["examples"],
    "tokens": stats["targets_tokens"],
    "seconds_with_startup": round(seconds, 1),
    "seconds_writing": writing,
    "documents_per_s": round(stats["examples"] / writing),
    "tokens_per_s": round(stats["targets_tokens"] / writing),
  }


def write_documents(path: str, num_docs: int = 2000, seed: int = 0) -> None:
  """Random pre-tokenized documents of 50..2000 tokens, as one flat array plus row lengths."""
  import numpy as np

  rng = np.random.RandomState(seed)
  lengths = rng.randint(50, 2000, size=num_docs)
  np.savez(
    path, tokens=rng.randint(3, 32000, size=int(lengths.sum())).astype(np.int32), lengths=lengths
  )


def _documents_dataset(path: str):
  import numpy as np
  import tensorflow as tf

  data = np.load(path)
  docs = tf.RaggedTensor.from_row_lengths(data["tokens"], data["lengths"])
  return tf.data.Dataset.from_tensor_slices(docs).repeat().map(lambda t: {"targets": t})


def _masking_dataset(stage: str, docs_path: str):
  import seqio

  features = {
    "targets": seqio.Feature(seqio.PassThroughVocabulary(32100, eos_id=1)),
    "inputs": seqio.Feature(seqio.PassThroughVocabulary(32100, eos_id=1)),
  }
  ds = _documents_dataset(docs_path)
  with seqio.utils.map_seed_manager(0):
    if stage == "t5":
      from t5.data import preprocessors as t5_preprocessors

      ds = t5_preprocessors.span_corruption(ds, LENGTHS, features)
    else:
      from t5x_lite.data import span_corruption

      ds = span_corruption.span_corruption(ds, LENGTHS, features)
    return seqio.preprocessors.append_eos_after_trim(
      ds, output_features=features, sequence_length=LENGTHS
    )


def _trainer_batches():
  """Numpy batches as the trainer of a one-process run reads them."""
  from t5x_lite.data import pipeline

  return pipeline.train_iterator(QUICKSTART_TASK, LENGTHS, BATCH_SIZE, seed=0)


def _measure_trainer(cores: int, num_examples: int) -> dict:
  import numpy as np

  from t5x_lite.data.quickstart_corpus import ensure_quickstart_assets
  import t5x_lite.tasks  # noqa: F401

  ensure_quickstart_assets()
  start = time.perf_counter()
  it = _trainer_batches()
  for _ in range(max(1, 1000 // BATCH_SIZE)):  # Warm-up: tracing, vocabulary, first reads.
    next(it)
  startup = time.perf_counter() - start
  num_batches = max(1, num_examples // BATCH_SIZE)
  start = time.perf_counter()
  tokens = 0
  for _ in range(num_batches):
    tokens += int(np.count_nonzero(next(it)["decoder_target_tokens"]))
  seconds = time.perf_counter() - start
  num_examples = num_batches * BATCH_SIZE
  return {
    "stage": "trainer",
    "cores": cores,
    "examples": num_examples,
    "examples_per_s": round(num_examples / seconds, 1),
    "seconds": round(seconds, 2),
    "startup_s": round(startup, 1),
    "target_tokens_per_example": round(tokens / num_examples, 1),
  }


def _measure(stage: str, cores: int, num_examples: int, docs_path: str) -> dict:
  import numpy as np
  import tensorflow as tf

  if stage == "trainer":
    return _measure_trainer(cores, num_examples)
  if stage in ("masking", "t5"):
    if stage == "masking":
      from t5x_lite.data import pipeline  # noqa: F401  (hides accelerators from TF, as in training)
    ds = _masking_dataset(stage, docs_path)
  else:
    import seqio

    from t5x_lite.data import (
      pipeline,  # noqa: F401
      tokenized_cache,
    )
    from t5x_lite.data.quickstart_corpus import ensure_quickstart_assets
    import t5x_lite.tasks  # noqa: F401

    ensure_quickstart_assets()
    task = seqio.get_mixture_or_task(QUICKSTART_TASK)
    if stage == "cached":
      tokenized_cache.use_cache(task, _cache_dir(docs_path), "train")
    ds = task.get_dataset(
      LENGTHS, split="train", shuffle=False, seed=0, num_epochs=None, use_cached=stage == "cached"
    )
  # Consumed as the trainer consumes it: padded to the feature lengths and batched, so the
  # Python loop costs one step per batch, not per example (the same for every stage).
  ds = ds.map(lambda ex: {k: ex[k] for k in LENGTHS}).padded_batch(
    BATCH_SIZE, padded_shapes={k: [n] for k, n in LENGTHS.items()}
  )
  options = tf.data.Options()
  options.threading.private_threadpool_size = cores
  options.threading.max_intra_op_parallelism = 1
  ds = ds.with_options(options).prefetch(4)
  it = iter(ds)
  for _ in range(max(1, 1000 // BATCH_SIZE)):  # Warm-up: tracing, vocabulary, first reads.
    next(it)
  num_batches = max(1, num_examples // BATCH_SIZE)
  start = time.perf_counter()
  tokens = 0
  for _ in range(num_batches):
    tokens += int(np.count_nonzero(next(it)["targets"].numpy()))
  seconds = time.perf_counter() - start
  num_examples = num_batches * BATCH_SIZE
  return {
    "stage": stage,
    "cores": cores,
    "examples": num_examples,
    "examples_per_s": round(num_examples / seconds, 1),
    "seconds": round(seconds, 2),
    "target_tokens_per_example": round(tokens / num_examples, 1),
  }


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=3000)
  parser.add_argument("--cores", default="1,2")
  parser.add_argument("--stages", default="masking,t5,tokenized,cached,trainer")
  parser.add_argument("--t5_python", help="python of a separate environment with the `t5` package")
  parser.add_argument(
    "--repeats",
    type=int,
    default=1,
    help="rounds over all stages (interleaved); the median is reported",
  )
  parser.add_argument(
    "--feed",
    type=float,
    default=100 * 128,
    help="examples/s to feed (default: 100 steps/s x batch 128)",
  )
  parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._child:
    stage, cores, docs_path = args._child
    print(json.dumps(_measure(stage, int(cores), args.examples, docs_path)), flush=True)
    return 0
  env = dict(
    os.environ,
    TF_CPP_MIN_LOG_LEVEL="3",
    CUDA_VISIBLE_DEVICES="",
    PYTHONPATH=os.pathsep.join(
      filter(
        None,
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH")],
      )
    ),
  )
  stages = [s for s in args.stages.split(",") if s != "t5" or args.t5_python]
  if "t5" in args.stages.split(",") and not args.t5_python:
    print("skipping stage t5: pass --t5_python", file=sys.stderr)
  results: dict[tuple[str, int], list[float]] = {}
  with tempfile.TemporaryDirectory() as tmp:
    docs_path = os.path.join(tmp, "docs.npz")
    write_documents(docs_path)
    if "cached" in stages:
      print(json.dumps(write_cache(docs_path, env)), flush=True)
    for _ in range(args.repeats):
      for cores in (int(c) for c in args.cores.split(",")):
        for stage in stages:
          pin = (
            ["taskset", "-c", ",".join(str(i) for i in range(cores))]
            if shutil.which("taskset")
            else []
          )
          python = args.t5_python if stage == "t5" else sys.executable
          child_env = env if stage != "t5" else dict(env, PYTHONPATH="")  # t5 side: no project code
          cmd = pin + [
            python,
            os.path.abspath(__file__),
            f"--examples={args.examples}",
            "--_child",
            stage,
            str(cores),
            docs_path,
          ]
          out = subprocess.run(cmd, capture_output=True, text=True, env=child_env)
          if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            return 1
          row = json.loads(out.stdout.strip().splitlines()[-1])
          print(json.dumps(row), flush=True)
          results.setdefault((stage, cores), []).append(row["examples_per_s"])
  med = {k: statistics.median(v) for k, v in results.items()}
  print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)\n")
  print(
    "| stage | cores | examples/s | examples/s per core | cores to feed "
    f"{args.feed:.0f}/s |\n|---|---|---|---|---|"
  )
  for (stage, cores), rate in med.items():
    print(
      f"| {stage} | {cores} | {rate:.0f} | {rate / cores:.0f} | "
      f"{math.ceil(args.feed / (rate / cores))} |"
    )
  for cores in sorted({c for _, c in med}):
    if ("masking", cores) in med and ("t5", cores) in med:
      print(
        f"masking vs t5 at {cores} core(s): {med[('masking', cores)] / med[('t5', cores)]:.2f}x"
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
