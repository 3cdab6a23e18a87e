"""Start-up cost: whole-process wall time of a 2-step training run, deep vs shallow models.

  python benchmarks/startup.py [--pairs=tiny] [--repeats=2]

Each run is `python -m t5x_lite.train` in a fresh process and a fresh MODEL_DIR, on the offline
quickstart corpus, 2 steps, no evaluation batches (train.eval_steps=0), one checkpoint at the
end. The wall time therefore holds imports, tracing, XLA compilation, init, 2 steps and the
save. Scan over layers makes tracing and compilation independent of depth, so a 32-layer model
should start almost as fast as its 4-layer sibling. Short sequences keep the 2 steps
themselves small (at 512/114, batch 16, nl32 holds 14 GB of activations and its steps
dominate). Pairs run interleaved (a, b, a, b, ...); medians are reported, with the child's
peak resident memory (ru_maxrss).

Pairs:
  tiny   t5-efficient-tiny-nl32 vs t5-efficient-tiny   batch 16, inputs 64 / targets 16
  base   t5-efficient-base-nl48 vs t5-efficient-base   batch 2, inputs 64 / targets 16
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = {
  "tiny": (("t5-efficient-tiny-nl32", "t5-efficient-tiny"), 16, {"inputs": 64, "targets": 16}),
  "base": (("t5-efficient-base-nl48", "t5-efficient-base"), 2, {"inputs": 64, "targets": 16}),
}


def run_once(model: str, batch: int, lengths: dict, model_dir: str) -> dict:
  cmd = [
    sys.executable,
    "-m",
    "t5x_lite.train",
    "--gin_file=models/t5_efficient.gin",
    "--gin_file=runs/quickstart.gin",
    f"--gin.MODEL_NAME='{model}'",
    f"--gin.MODEL_DIR='{model_dir}'",
    "--gin.TRAIN_STEPS=2",
    f"--gin.BATCH_SIZE={batch}",
    f"--gin.TASK_FEATURE_LENGTHS={lengths!r}",
    "--gin.train.eval_steps=0",
    "--gin.train.log_period=1",
  ]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  with tempfile.TemporaryFile("w+") as log:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would be the max over all children).
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
      log.seek(0)
      raise RuntimeError(f"{model} failed ({proc.returncode}):\n{log.read()[-3000:]}")
  return {"model": model, "wall_s": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pairs", default="tiny", help="comma-separated: " + ",".join(PAIRS))
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  summary = []
  for pair in args.pairs.split(","):
    models, batch, lengths = PAIRS[pair]
    walls = {m: [] for m in models}
    rss = {m: [] for m in models}
    for _ in range(args.repeats):
      for model in models:
        with tempfile.TemporaryDirectory() as model_dir:
          row = run_once(model, batch, lengths, model_dir)
        print(json.dumps(row), flush=True)
        walls[model].append(row["wall_s"])
        rss[model].append(row["peak_rss_mb"])
    deep, shallow = models
    med = {m: statistics.median(v) for m, v in walls.items()}
    summary.append(
      {
        "pair": pair,
        "batch": batch,
        "lengths": lengths,
        **{f"{m}_wall_s": med[m] for m in models},
        **{f"{m}_peak_rss_mb": max(rss[m]) for m in models},
        "ratio": round(med[deep] / med[shallow], 2),
      }
    )
  for row in summary:
    print(json.dumps(row))
  print(f"load average: {os.getloadavg()[0]:.2f} (on {os.cpu_count()} cores)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
