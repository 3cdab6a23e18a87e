"""The train command at the recipe's shapes: time to its first step, and how fast it stops.

  python benchmarks/first_step.py [--runs=auto:1,auto:default] [--eval_steps=2]
  python benchmarks/first_step.py --sigterm_after=20,60,120

t5-efficient-tiny with runs/pretrain.gin (batch 128, inputs 512 / targets 114, bfloat16, remat
'lean', 2 microbatches; train.memory_fit='off') on the generated 16-file C4-format corpus of
benchmarks/data_startup.py, one process. Each run is a fresh `python -m t5x_lite.train` in a new
MODEL_DIR; a run is READER:COUNT (data_reader.kind, logical_shards.count or 'default').
Default mode: seconds from the process start to the step-0 evaluation line and to the first
step's line ("compiled the train step"), then SIGTERM: it saves that step and exits.
--sigterm_after: a SIGTERM that many seconds into start-up; prints the exit code, the seconds
from the signal to the exit, and what MODEL_DIR holds afterwards.
"""

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data_startup import REPO, write_corpus  # noqa: E402


def command(corpus: str, model_dir: str, reader: str, count: str, eval_steps: int) -> list:
  vocab = os.path.expanduser("~/.cache/t5x_lite/quickstart/vocab.model")
  cmd = [
    sys.executable,
    "-m",
    "t5x_lite.train",
    "--gin_file=models/t5_efficient_tiny.gin",
    "--gin_file=runs/pretrain.gin",
    f"--gin.MODEL_DIR='{model_dir}'",
    "--gin.MIXTURE_OR_TASK_NAME='c4_json_span_corruption'",
    f"--gin.C4_JSON_DIR='{corpus}'",
    f"--gin.C4_VOCABULARY='{vocab}'",
    "--gin.train.memory_fit='off'",
    f"--gin.train.eval_steps={eval_steps}",
    f"--gin.data_reader.kind='{reader}'",
  ]
  return cmd + ([] if count == "default" else [f"--gin.logical_shards.count={count}"])


def _lines(proc, out: queue.Queue, started: float) -> None:
  for line in proc.stdout:
    out.put((time.perf_counter() - started, line.rstrip()))
  out.put(None)


def first_step(cmd: list, timeout: float) -> dict:
  started = time.perf_counter()
  proc = subprocess.Popen(
    cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  lines: queue.Queue = queue.Queue()
  threading.Thread(target=_lines, args=(proc, lines, started), daemon=True).start()
  row = {}
  while "first_step_s" not in row:
    try:
      item = lines.get(timeout=max(1.0, timeout - (time.perf_counter() - started)))
    except queue.Empty:
      item = None
    if item is None:
      row["error"] = f"no first step in {timeout:.0f} s"
      break
    at, line = item
    if "| eval loss" in line and "eval_s" not in row:
      row["eval_s"] = round(at, 1)
    if line.startswith("compiled the train step"):
      row["first_step_s"] = round(at, 1)
  proc.send_signal(signal.SIGTERM)
  signalled = time.perf_counter()
  proc.wait()
  row.update(
    exit_code=proc.returncode, exit_after_signal_s=round(time.perf_counter() - signalled, 1)
  )
  return row


def stop_during_start_up(cmd: list, model_dir: str, after: float) -> dict:
  proc = subprocess.Popen(
    cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  time.sleep(after)
  proc.send_signal(signal.SIGTERM)
  signalled = time.perf_counter()
  out, _ = proc.communicate()
  said = [l for l in out.splitlines() if "during start-up" in l or "saved step" in l]
  return {
    "sigterm_after_s": after,
    "exit_code": proc.returncode,
    "exit_after_signal_s": round(time.perf_counter() - signalled, 2),
    "said": said[-1] if said else None,
    "model_dir_holds": sorted(os.listdir(model_dir)) if os.path.isdir(model_dir) else None,
  }


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default="auto:1,auto:default")
  parser.add_argument("--eval_steps", type=int, default=2)
  parser.add_argument("--timeout", type=float, default=900.0)
  parser.add_argument("--sigterm_after", default=None, help="seconds, comma-separated")
  parser.add_argument("--corpus_dir", default="/tmp/t5x_lite_c4_like")
  args = parser.parse_args()
  corpus = os.path.join(args.corpus_dir, "files_16")
  write_corpus(corpus, 16, 2000)
  root = tempfile.mkdtemp(prefix="first_step_")
  try:
    if args.sigterm_after:
      for after in (float(s) for s in args.sigterm_after.split(",")):
        model_dir = os.path.join(root, f"stop_{after:g}")
        cmd = command(corpus, model_dir, "auto", "default", args.eval_steps)
        print(json.dumps(stop_during_start_up(cmd, model_dir, after)), flush=True)
      return 0
    for i, run in enumerate(args.runs.split(",")):
      reader, count = run.split(":")
      model_dir = os.path.join(root, f"{i}_{reader}_{count}")  # a fresh run each, no resume
      row = {"reader": reader, "count": count, "load": round(os.getloadavg()[0], 2)}
      row.update(
        first_step(command(corpus, model_dir, reader, count, args.eval_steps), args.timeout)
      )
      print(json.dumps(row), flush=True)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
