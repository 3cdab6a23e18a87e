"""How fast this host reads a run's training data: what `preflight` and the benchmarks report.

  measure_reading("c4_json_span_corruption", {"inputs": 512, "targets": 114}, 128,
                  process_index=0, process_count=4, seconds=30)

builds one process's share of the logical shards exactly as the trainer does, times the first
batch, then reads for `seconds` (and at least `min_batches`) and reports examples/s, the CPU time
they took (examples per core-second: what scales to a host with more cores) and the resident
memory the pipelines added.
"""

import os
import time

from t5x_lite import flops
from t5x_lite.data import batches as sources
from t5x_lite.errors import UserError


def resident_bytes() -> int:
  """This process's resident memory (VmRSS), 0 where /proc is not there."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def _cpu_seconds() -> float:
  t = os.times()
  return t.user + t.system


def measure_reading(
  mixture_or_task_name: str,
  task_feature_lengths: dict,
  batch_size: int,
  *,
  process_index: int = 0,
  process_count: int = 1,
  seed: int = 0,
  seconds: float = 20.0,
  min_batches: int = 5,
) -> dict:
  """Start-up, steady-state rate and memory of one process's training data (module docstring)."""
  before = resident_bytes()
  started = time.perf_counter()
  it = sources.train_iterator(
    mixture_or_task_name,
    task_feature_lengths,
    batch_size,
    process_index=process_index,
    process_count=process_count,
    seed=seed,
  )
  rows = len(next(it)["encoder_input_tokens"])
  first_batch_s = time.perf_counter() - started
  batches, window_start, cpu_start = 0, time.perf_counter(), _cpu_seconds()
  while batches < min_batches or time.perf_counter() - window_start < seconds:
    try:
      next(it)
    except UserError:
      if not batches or not hasattr(it, "seek"):
        raise
      it.seek(0)  # ready-made examples that end before the time is up: read them again
      continue
    batches += 1
  elapsed = time.perf_counter() - window_start
  cpu = _cpu_seconds() - cpu_start
  examples = batches * rows
  shards = len(getattr(it, "shards", ())) or None  # ready-made and synthetic data have none
  added = max(resident_bytes() - before, 0)  # while the pipelines still hold their buffers
  it.close()
  kind = sources.source_kind(mixture_or_task_name)
  return {
    "pipeline": kind
    if kind != sources.TASK
    else "streams"
    if it.reads_ahead
    else "seqio per shard",
    "logical_shards": shards,
    "rows_per_batch": rows,
    "first_batch_s": round(first_batch_s, 2),
    "examples_per_s": round(examples / elapsed, 1),
    "examples_per_core_s": round(examples / max(cpu, 1e-9), 1),
    "cores": flops.cpu_cores(),
    "cores_busy": round(cpu / elapsed, 2),
    "resident_bytes": added,
    "measured_s": round(elapsed, 1),
  }
