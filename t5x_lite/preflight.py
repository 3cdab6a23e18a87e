"""`python -m t5x_lite.preflight --gin_file=MODEL.gin --gin_file=RUN.gin --target=v4-32 [--gin...]`

What can be known about a run before its hardware exists, measured on this host where it can be
(same gin flags as `train`; --target as `plan` takes it):
  data        one host's share of the logical shards, read here as the trainer reads them:
              time to the first batch, examples per core-second, resident memory
  memory      `plan --fit` (the deviceless compile): bytes per device, fits, compile time
  required    the examples/s one host must deliver at 40% and 60% MFU (train FLOPs per example,
              the target's peak, devices per host) and the cores that takes at the measured rate
  checkpoint  bytes per save, the write rate measured in MODEL_DIR (a test file, removed),
              seconds per save and their share of a CHECKPOINT_PERIOD
Prints one verdict line per risk, then one JSON object with the keys data, memory, compile_s,
required_examples_per_s, checkpoint, verdicts. Exit code 0 whatever the verdicts say.
"""

import argparse
import json
import math
import os
import subprocess
import sys

MFUS = (0.4, 0.6)
# The TPU generation in a topology name -> the device kind whose peak flops.py knows.
_TPU_KINDS = {"v4": "TPU v4", "v5e": "TPU v5e", "v5p": "TPU v5p", "v6e": "TPU v6"}


def _parser() -> argparse.ArgumentParser:
  from t5x_lite import plan

  parser = argparse.ArgumentParser(
    prog="python -m t5x_lite.preflight",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--target", required=True, help=", ".join(plan.TARGETS))
  parser.add_argument(
    "--host_cores", type=int, default=None, help="CPU cores of one host of the target, if known"
  )
  parser.add_argument(
    "--data_seconds", type=float, default=30.0, help="how long to read data after the first batch"
  )
  parser.add_argument("--write_mb", type=int, default=256, help="size of the write-rate test file")
  parser.add_argument("--skip_data", action="store_true", help="do not read the training data")
  parser.add_argument(
    "--hosts", type=int, default=None, help="hosts of the target (default: from its topology)"
  )
  return parser


def target_peak(target_name: str) -> tuple[int, float]:
  """(chips or GPUs, bfloat16 peak FLOP/s of each) of a plan target."""
  from t5x_lite import flops, plan

  target = plan.TARGETS[target_name]
  if target.platform == "tpu":
    generation, dims = target.topology.split(":")
    kind = _TPU_KINDS[generation]
  else:
    dims, kind = target.topology, target_name.split("x")[0]
  return math.prod(int(d) for d in dims.split("x")), flops.peak_flops_of_kind(kind)


def _memory(gin_args: list[str], target: str) -> dict:
  """`plan --fit` in a subprocess (it puts the target's compiler on its own path)."""
  done = subprocess.run(
    [sys.executable, "-m", "t5x_lite.plan", *gin_args, f"--target={target}", "--fit"],
    capture_output=True,
    text=True,
  )
  lines = done.stdout.strip().splitlines()
  if done.returncode != 0 or not lines:
    errors = [l.removeprefix("error: ") for l in done.stderr.splitlines() if l.startswith("error:")]
    return {"error": (errors or done.stderr.strip().splitlines() or ["plan failed"])[-1]}
  return json.loads(lines[-1])


def _data(settings, hosts: int, seconds: float) -> dict:
  """One host's share of the logical shards, read here."""
  from t5x_lite import gin_utils
  from t5x_lite.data import measure
  from t5x_lite.errors import UserError, first_line

  task = gin_utils.bound_value("train.mixture_or_task_name")
  try:
    return measure.measure_reading(
      task, settings.lengths, settings.batch_size, process_count=hosts, seconds=seconds
    )
  except UserError as e:
    return {"error": first_line(e, limit=None)}


def _required(cfg, settings, target: str, hosts: int) -> dict:
  """Examples/s one host must read at each MFU of MFUS."""
  from t5x_lite import config

  chips, peak = target_peak(target)
  per_example = config.train_flops_per_example(
    cfg, settings.lengths["inputs"], settings.lengths["targets"]
  )
  return {
    "train_flops_per_example": per_example,
    "devices": chips,
    "peak_flops_per_device": peak,
    "hosts": hosts,
    **{f"mfu_{round(m * 100)}": chips * peak * m / per_example / hosts for m in MFUS},
  }


def _state_bytes(cfg, settings) -> int:
  """Bytes of the train state a checkpoint writes (parameters, optimizer state, step, RNG)."""
  import jax

  from t5x_lite import partitioning
  from t5x_lite.models import EncoderDecoderModel
  from t5x_lite.trainer import Trainer

  mesh = partitioning.make_mesh(1, devices=jax.devices()[:1])
  trainer = Trainer(
    EncoderDecoderModel(cfg), mesh, partitioning.logical_axis_rules(), settings.lengths
  )
  leaves = jax.tree.leaves(trainer.abstract_state())
  return sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)


def _checkpoint(cfg, settings, model_dir, period: int, required: dict, write_mb: int) -> dict:
  from t5x_lite import checkpoints

  total = _state_bytes(cfg, settings)
  per_host = total / required["hosts"]
  result = {"state_bytes": total, "bytes_per_host": int(per_host), "period_steps": period}
  if not model_dir:
    return {**result, "error": "MODEL_DIR is not set: the write rate was not measured"}
  rate = checkpoints.measure_write_rate(model_dir, write_mb << 20)
  step_flops = required["train_flops_per_example"] * settings.batch_size
  result.update(write_bytes_per_s=rate, seconds_per_save=per_host / rate)
  for m in MFUS:
    step_s = step_flops / (required["devices"] * required["peak_flops_per_device"] * m)
    result[f"share_of_period_mfu_{round(m * 100)}"] = per_host / rate / (period * step_s)
  return result


def main(argv=None) -> int:
  from t5x_lite import gin_utils
  from t5x_lite.errors import UserError

  argv = list(sys.argv[1:] if argv is None else argv)
  gin_files, gin_bindings, rest = gin_utils.split_gin_flags(argv)
  args = _parser().parse_args(rest)
  from t5x_lite import plan, preflight_report

  if args.target not in plan.TARGETS:
    raise UserError(f"unknown --target {args.target!r}; one of {', '.join(plan.TARGETS)}")
  if not gin_files:
    raise UserError(
      "no --gin_file given; e.g. --gin_file=models/t5_efficient_base.gin "
      "--gin_file=runs/pretrain.gin"
    )
  memory = _memory([a for a in argv if a.startswith("--gin")], args.target)
  from t5x_lite import config, run_setup, training  # noqa: F401  (configurables)

  run_setup.parse_run_config(gin_files, gin_bindings)
  settings = plan.run_settings()
  cfg = config.model_config()
  hosts = args.hosts or memory.get("hosts") or 1
  data = {"skipped": True} if args.skip_data else _data(settings, hosts, args.data_seconds)
  required = _required(cfg, settings, args.target, hosts)
  checkpoint = _checkpoint(
    cfg,
    settings,
    gin_utils.bound_value("train.model_dir", None),
    gin_utils.bound_value("train.checkpoint_period", 1000),
    required,
    args.write_mb,
  )
  report = {
    "target": args.target,
    "data": data,
    "memory": memory,
    "compile_s": memory.get("compile_s"),
    "required_examples_per_s": required,
    "checkpoint": checkpoint,
  }
  report["verdicts"] = preflight_report.verdicts(report, args.host_cores)
  for line in report["verdicts"]:
    print(line, flush=True)
  print(json.dumps(report), flush=True)
  return 0


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  from t5x_lite.errors import run_main

  run_main(main)
