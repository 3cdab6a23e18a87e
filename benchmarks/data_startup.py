"""Start-up, memory and examples/s per core of the trainer's data path at the recipe's shapes.

  python benchmarks/data_startup.py [--files=16,1024] [--counts=1,8,64] [--readers=auto,seqio]

Writes C4-format corpora once into --corpus_dir (c4-{train,validation}.NNNNN-of-MMMMM.json.gz,
documents of ~2,000 characters drawn from the quickstart corpus's paragraphs: 2,000 per file for
16 files, --docs_1024 per file for 1,024). Then, for each (files, logical_shards.count, reader),
a fresh process pinned to --cores cores builds one process's train stream exactly as the trainer
does (c4_json_span_corruption, batch 128, inputs 512 / targets 114, the quickstart vocabulary),
times its first batch, reads --seconds more, then times the first evaluation batch. Readers:
'auto' (the streams: one pipeline per process) and 'seqio' (one seqio pipeline per logical shard,
what earlier versions ran). One JSON row per run, then a table.
"""

import argparse
import gzip
import itertools
import json
import os
import random
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
LENGTHS = {"inputs": 512, "targets": 114}
BATCH = 128


def write_corpus(directory: str, num_files: int, docs_per_file: int) -> None:
  """C4-format shards of ~2,000-character documents (skipped when already complete)."""
  done = os.path.join(directory, "COMPLETE")
  if os.path.exists(done):
    return
  from t5x_lite.data import quickstart_corpus

  quickstart_corpus.ensure_quickstart_assets(str(quickstart_corpus.default_cache_dir()))
  paragraphs = []
  for path in sorted(quickstart_corpus.default_cache_dir().glob("train-*.jsonl")):
    for line in open(path):
      paragraphs += [p for p in json.loads(line)["text"].split("\n") if p.strip()]
  rng = random.Random(0)

  def document() -> str:
    parts, size = [], 0
    while size < 2000:
      parts.append(rng.choice(paragraphs))
      size += len(parts[-1]) + 1
    return "\n".join(parts)[:2000]

  os.makedirs(directory, exist_ok=True)
  for split, files in (("train", num_files), ("validation", 1)):
    for i in range(files):
      name = os.path.join(directory, f"c4-{split}.{i:05d}-of-{files:05d}.json.gz")
      with gzip.open(name, "wt", compresslevel=1) as f:
        for j in range(docs_per_file):
          row = {"text": document(), "timestamp": "2019-04-25T12:57:54Z", "url": f"u/{i}/{j}"}
          f.write(json.dumps(row) + "\n")
  open(done, "w").close()


def child(corpus: str, count: int, reader: str, seconds: float) -> dict:
  """One run, in this (pinned) process: the train stream, then the first evaluation batch."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  from t5x_lite import gin_utils
  from t5x_lite.data import measure, pipeline, quickstart_corpus
  import t5x_lite.tasks  # noqa: F401

  vocab = os.path.join(quickstart_corpus.default_cache_dir(), "vocab.model")
  gin_utils.parse_gin(
    [],
    [
      f"c4_json.data_dir = '{corpus}'",
      f"c4/task_vocabulary.path = '{vocab}'",
      f"logical_shards.count = {count}",
      f"data_reader.kind = '{reader}'",
    ],
  )
  row = measure.measure_reading("c4_json_span_corruption", LENGTHS, BATCH, seconds=seconds)
  started = time.perf_counter()
  dataset = pipeline.eval_dataset("c4_json_span_corruption", LENGTHS, BATCH)
  next(iter(dataset))
  row["eval_first_batch_s"] = round(time.perf_counter() - started, 2)
  row["resident_bytes_total"] = measure.resident_bytes()
  return row


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--files", default="16,1024")
  parser.add_argument("--counts", default="1,8,64")
  parser.add_argument("--readers", default="auto,seqio")
  parser.add_argument("--cores", type=int, default=2)
  parser.add_argument("--seconds", type=float, default=60.0)
  parser.add_argument("--docs_1024", type=int, default=100)
  parser.add_argument("--corpus_dir", default="/tmp/t5x_lite_c4_like")
  parser.add_argument("--child", nargs=3, metavar=("CORPUS", "COUNT", "READER"))
  args = parser.parse_args()
  if args.child:
    corpus, count, reader = args.child
    print(json.dumps(child(corpus, int(count), reader, args.seconds)), flush=True)
    return 0
  rows = []
  for files, count, reader in itertools.product(
    [int(f) for f in args.files.split(",")],
    [int(c) for c in args.counts.split(",")],
    args.readers.split(","),
  ):
    corpus = os.path.join(args.corpus_dir, f"files_{files}")
    write_corpus(corpus, files, 2000 if files <= 16 else args.docs_1024)
    cpus = ",".join(str(c) for c in range(args.cores))
    command = [sys.executable, __file__, "--child", corpus, str(count), reader]
    command += [f"--seconds={args.seconds}"]
    started = time.perf_counter()
    done = subprocess.run(
      ["taskset", "-c", cpus, *command], capture_output=True, text=True, cwd=REPO
    )
    if done.returncode != 0:
      print(done.stderr[-3000:], file=sys.stderr)
      return 1
    row = {"files": files, "count": count, "reader": reader, "load": os.getloadavg()[0]}
    row.update(json.loads(done.stdout.strip().splitlines()[-1]))
    row["process_s"] = round(time.perf_counter() - started, 1)
    rows.append(row)
    print(json.dumps(row), flush=True)
  print(
    "| files | count | reader | first batch (s) | first eval batch (s) | examples per core-second "
    "| pipelines' memory (GB) |"
  )
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(
      f"| {r['files']} | {r['count']} | {r['reader']} | {r['first_batch_s']} | "
      f"{r['eval_first_batch_s']} | {r['examples_per_core_s']:,.0f} | "
      f"{r['resident_bytes'] / 1e9:.2f} |"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
