"""What the train command's loop costs outside the compiled step, on any accelerator.

  python benchmarks/loop_overhead.py [--models=t5-efficient-tiny,t5-efficient-base] [--batch=128]

Three ways to run the same `Trainer.train_step`, each for --steps steps:
  bare       one batch already on the devices, no host work; waits once at the end
  loop N     what training.py does per step: a new host batch each step (numpy, as the data
             iterator gives it), placed on the devices right after the previous step is
             dispatched (read ahead), at most two steps queued ahead of the devices, metrics
             kept on the devices and read (a host sync, the NaN check) every N steps, as
             train.log_period does
Reports ms per step and loop / bare. Needs no TensorFlow (the data pipeline's own cost is in
benchmarks/data_startup.py and cpu_throughput.py --train_command).
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cpu_throughput import make_batch  # noqa: E402
import jax  # noqa: E402

from t5x_lite import config, flops, partitioning  # noqa: E402
from t5x_lite.models import EncoderDecoderModel  # noqa: E402
from t5x_lite.trainer import Trainer  # noqa: E402


def bare(trainer, state, batch, steps: int):
  device_batch = trainer.make_global_batch(batch)
  started = time.perf_counter()
  for _ in range(steps):
    state, metrics = trainer.train_step(state, device_batch)
  float(metrics["loss"])
  return state, (time.perf_counter() - started) / steps


# training.MAX_STEPS_AHEAD (not imported: training imports TensorFlow, which this script avoids).
STEPS_AHEAD = 2


def loop(trainer, state, host_batches: list, steps: int, log_period: int):
  ahead = trainer.make_global_batch(host_batches[0])
  pending, in_flight = [], []
  started = time.perf_counter()
  for step in range(1, steps + 1):
    batch, ahead = ahead, None
    state, metrics = trainer.train_step(state, batch)
    pending.append(metrics)
    ahead = trainer.make_global_batch(host_batches[step % len(host_batches)])
    in_flight.append(metrics["loss"])
    if len(in_flight) > STEPS_AHEAD:  # the host stays at most this many steps ahead
      in_flight.pop(0).block_until_ready()
    if step % log_period == 0 or step == steps:
      if not all(math.isfinite(float(m["loss"])) for m in pending):  # the NaN check
        raise RuntimeError("non-finite loss")
      jax.device_get(pending[-1])
      pending.clear()
  return state, (time.perf_counter() - started) / steps


def measure(name: str, args) -> dict:
  cfg = dataclasses.replace(
    config.resolve_model_name(name),
    dtype=args.dtype,
    dropout_rate=0.0,
    remat_policy=args.remat_policy,
  )
  lengths = {"inputs": args.inputs, "targets": args.targets}
  mesh = partitioning.make_mesh(1, devices=jax.devices()[:1])
  trainer = Trainer(EncoderDecoderModel(cfg), mesh, partitioning.DEFAULT_RULES, lengths)
  state = trainer.init_state(0)
  host_batches = [
    make_batch(args.batch, args.inputs, args.targets, cfg.vocab_size, seed=i) for i in range(4)
  ]
  state, _ = bare(trainer, state, host_batches[0], 2)  # compile and warm up
  row = {"model": name, "dtype": args.dtype, "batch": args.batch}
  for _ in range(args.rounds):
    state, t = bare(trainer, state, host_batches[0], args.steps)
    row.setdefault("bare_ms", []).append(1000 * t)
    for n in args.log_periods:
      state, t = loop(trainer, state, host_batches, args.steps, n)
      row.setdefault(f"loop_{n}_ms", []).append(1000 * t)
  for key in [k for k in row if k.endswith("_ms")]:
    row[key] = round(sorted(row[key])[len(row[key]) // 2], 3)  # median over rounds
  for n in args.log_periods:
    row[f"loop_{n}_vs_bare"] = round(row[f"loop_{n}_ms"] / row["bare_ms"], 3)
  per_step = config.train_flops_per_example(cfg, args.inputs, args.targets) * args.batch
  peak = flops.peak_flops_per_device()
  row["bare_mfu"] = peak and round(per_step / (row["bare_ms"] / 1000) / peak, 3)
  return row


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="t5-efficient-tiny,t5-efficient-base")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--remat_policy", default="none")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=114)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--log_periods", default="1,100")
  args = parser.parse_args()
  args.log_periods = [int(n) for n in args.log_periods.split(",")]
  device = jax.devices()[0]
  print(json.dumps({"device": device.device_kind, "platform": device.platform}), flush=True)
  for name in args.models.split(","):
    print(json.dumps(measure(name, args)), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
