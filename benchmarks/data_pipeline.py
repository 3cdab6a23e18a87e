"""Throughput of the span-corruption pipeline (examples/s at inputs 512 / targets 114).

  python benchmarks/data_pipeline.py [--examples=3000] [--cores=1,2]

Two stages, each pinned to 1 and 2 cores (`taskset` where available, plus a tf.data private
thread pool of that size):
  masking    pre-tokenized documents in memory -> chunk, concat/split, mask, EOS
  tokenized  the quickstart task end to end: JSONL files -> tokenize -> span corruption
Each measurement runs in its own process; prints one JSON line per run and a markdown table.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

LENGTHS = {"inputs": 512, "targets": 114}


def _measure(stage: str, cores: int, num_examples: int) -> dict:
  import numpy as np
  import seqio
  import tensorflow as tf

  import tasks  # noqa: F401
  from t5x_lite.data import pipeline, span_corruption
  from t5x_lite.data.quickstart_corpus import ensure_quickstart_assets

  del pipeline  # Imported to hide accelerators from TF, as in training.
  if stage == "masking":
    rng = np.random.RandomState(0)
    docs = [rng.randint(3, 32000, size=rng.randint(50, 2000)).astype(np.int32) for _ in range(2000)]
    ds = tf.data.Dataset.from_tensor_slices(tf.ragged.constant(docs)).repeat()
    ds = ds.map(lambda t: {"targets": t})
    features = {"targets": seqio.Feature(seqio.PassThroughVocabulary(32100, eos_id=1)),
                "inputs": seqio.Feature(seqio.PassThroughVocabulary(32100, eos_id=1))}
    with seqio.utils.map_seed_manager(0):
      ds = span_corruption.span_corruption(ds, LENGTHS, features)
      ds = seqio.preprocessors.append_eos_after_trim(ds, output_features=features,
                                                     sequence_length=LENGTHS)
  else:
    ensure_quickstart_assets()
    task = seqio.get_mixture_or_task("quickstart_span_corruption")
    ds = task.get_dataset(LENGTHS, split="train", shuffle=False, seed=0, num_epochs=None)
  options = tf.data.Options()
  options.threading.private_threadpool_size = cores
  options.threading.max_intra_op_parallelism = 1
  ds = ds.with_options(options).prefetch(64)
  it = iter(ds)
  for _ in range(200):  # Warm-up: graph tracing, vocabulary loading, first file reads.
    next(it)
  start = time.perf_counter()
  tokens = 0
  for _ in range(num_examples):
    tokens += int(tf.size(next(it)["targets"]))
  seconds = time.perf_counter() - start
  return {"stage": stage, "cores": cores, "examples": num_examples,
          "examples_per_s": round(num_examples / seconds, 1), "seconds": round(seconds, 2)}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=3000)
  parser.add_argument("--cores", default="1,2")
  parser.add_argument("--stages", default="masking,tokenized")
  parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._child:
    print(json.dumps(_measure(args._child[0], int(args._child[1]), args.examples)), flush=True)
    return 0
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
  rows = []
  for stage in args.stages.split(","):
    for cores in (int(c) for c in args.cores.split(",")):
      pin = ["taskset", "-c", ",".join(str(i) for i in range(cores))] if shutil.which("taskset") else []
      cmd = pin + [sys.executable, os.path.abspath(__file__), f"--examples={args.examples}",
                   "--_child", stage, str(cores)]
      out = subprocess.run(cmd, capture_output=True, text=True, env=env)
      if out.returncode:
        print(out.stderr[-2000:], file=sys.stderr)
        return 1
      row = json.loads(out.stdout.strip().splitlines()[-1])
      print(json.dumps(row), flush=True)
      rows.append(row)
  print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)\n")
  print("| stage | cores | examples/s |\n|---|---|---|")
  for r in rows:
    print(f"| {r['stage']} | {r['cores']} | {r['examples_per_s']} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
