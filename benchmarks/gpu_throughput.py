"""Training throughput on one accelerator: tokens/s, MFU, peak memory, largest batch that fits.

  python benchmarks/gpu_throughput.py                      # on a GPU/TPU host: the defaults below
  python benchmarks/gpu_throughput.py --models=t5-efficient-tiny --dtype=float32 \\
      --batch=2 --inputs=64 --targets=16 --steps=2 --max_batch=4   # CPU smoke run

Defaults: t5-efficient-base and t5-efficient-tiny-nl32, bfloat16 activations, batch 128,
inputs 512 / targets 114, the recipe's train step (per-layer Adafactor, z-loss) on one device.
MFU is against flops.peak_flops_per_device (vendor dense bf16 peak; measured matmul rate on
CPU). Attention runs as model_config.attention_impl='auto' would (cuDNN's fused kernel on GPUs;
rows measured before that setting existed are the xla kernel's: --attention_impl=xla). Peak
memory comes from the device's memory_stats() (absent on CPU). The largest batch is
found by doubling from --batch until allocation fails or --max_batch is reached. Nothing here
requires an accelerator.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cpu_throughput import Ours, make_batch  # noqa: E402
import jax  # noqa: E402

from t5x_lite import config, flops  # noqa: E402


def _is_oom(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def peak_memory_gb() -> float | None:
  stats = jax.local_devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2**30


def measure(cfg, batch_size: int, lengths: dict, steps: int) -> dict:
  batch = make_batch(batch_size, lengths["inputs"], lengths["targets"], cfg.vocab_size)
  ours = Ours(cfg, batch, lengths)  # includes one compile-and-run step
  ours.step()
  start = time.perf_counter()
  for _ in range(steps):
    ours.step()
  step_s = (time.perf_counter() - start) / steps
  flops_per_step = (
    config.train_flops_per_example(cfg, lengths["inputs"], lengths["targets"]) * batch_size
  )
  peak = flops.peak_flops_per_device()
  tokens = batch_size * (lengths["inputs"] + lengths["targets"])
  del ours
  return {
    "model": cfg.name,
    "dtype": cfg.dtype,
    "batch": batch_size,
    "step_s": round(step_s, 4),
    "tokens_per_s": round(tokens / step_s),
    "mfu": peak and round(flops_per_step / step_s / peak, 3),
    "peak_memory_gb": peak_memory_gb(),
  }


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="t5-efficient-base,t5-efficient-tiny-nl32")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=114)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--max_batch", type=int, default=4096, help="stop doubling here (0: don't)")
  parser.add_argument("--remat_policy", default="none")
  parser.add_argument(
    "--attention_impl",
    default="auto",
    help="model_config.attention_impl: auto (cuDNN on GPUs), xla or cudnn; "
    "benchmarks/gpu_attention.py compares them in one process",
  )
  parser.add_argument(
    "--scan_unroll",
    type=int,
    default=1,
    help="layers per scan iteration (model_config.scan_unroll)",
  )
  args = parser.parse_args()
  device = jax.local_devices()[0]
  print(
    json.dumps(
      {
        "device": device.device_kind,
        "platform": device.platform,
        "peak_flops": flops.peak_flops_per_device(),
      }
    ),
    flush=True,
  )
  lengths = {"inputs": args.inputs, "targets": args.targets}
  for name in args.models.split(","):
    cfg = dataclasses.replace(
      config.resolve_model_name(name),
      dtype=args.dtype,
      remat_policy=args.remat_policy,
      scan_unroll=args.scan_unroll,
      attention_impl=args.attention_impl,
    )
    print(json.dumps(measure(cfg, args.batch, lengths, args.steps)), flush=True)
    largest, batch = args.batch, args.batch * 2
    while args.max_batch and batch <= args.max_batch:
      try:
        row = measure(cfg, batch, lengths, max(1, args.steps // 2))
      except Exception as e:  # noqa: BLE001  (only allocation failures end the search)
        if not _is_oom(e):
          raise
        break
      print(json.dumps(row), flush=True)
      largest, batch = batch, batch * 2
    print(
      json.dumps(
        {
          "model": name,
          "largest_batch_that_fits": largest,
          "capped": bool(args.max_batch) and batch > args.max_batch,
        }
      ),
      flush=True,
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
