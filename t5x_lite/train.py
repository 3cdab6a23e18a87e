"""`python -m t5x_lite.train --gin_file=MODEL.gin --gin_file=RUN.gin [--gin.NAME=VALUE ...]`

Pretrains from gin; running the same command again resumes from the latest complete checkpoint.
The loop itself is t5x_lite/training.py (gin: `train.*`).
"""

if __name__ == "__main__":
  # SIGTERM / Ctrl-C during start-up end the command at once: set up before any import starts a
  # thread (t5x_lite/shutdown.py).
  from t5x_lite import shutdown

  shutdown.guard_startup()

from t5x_lite import quiet_startup  # noqa: E402,F401  (hides native start-up noise)

# isort: split

import argparse
import json
import sys

import jax

from t5x_lite import distributed, gin_utils
from t5x_lite.errors import UserError, run_main


def main(argv=None) -> int:
  gin_files, gin_bindings, rest = gin_utils.split_gin_flags(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(prog="python -m t5x_lite.train", description=__doc__)
  parser.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0")
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument(
    "--multi_host",
    action="store_true",
    help="initialise jax.distributed from the cluster (TPU pod, SLURM)",
  )
  parser.add_argument("--distributed_timeout_s", type=int, default=120)
  parser.add_argument(
    "--stop_at_step",
    type=int,
    default=None,
    help="stop (with a checkpoint) at this step, as a preemption would",
  )
  args, unknown = parser.parse_known_args(rest)
  if unknown:
    raise UserError(f"unknown flag {unknown[0]}; gin settings go through --gin.NAME=VALUE")
  if not gin_files:
    raise UserError(
      "no --gin_file given; e.g. --gin_file=models/t5_efficient_tiny.gin "
      "--gin_file=runs/pretrain.gin"
    )
  distributed.initialize(
    args.coordinator_address,
    args.num_processes,
    args.process_id,
    args.multi_host,
    args.distributed_timeout_s,
  )
  if jax.process_count() > 1:  # the console shows only the project's own lines
    quiet_startup.drop_gloo_lines()
  from t5x_lite import run_setup, training  # no TensorFlow: only a task's pipeline needs it

  run_setup.parse_run_config(gin_files, gin_bindings)
  with gin_utils.required_bindings_checked():
    result = training.train(stop_at_step=args.stop_at_step)
  if jax.process_index() == 0:
    print(json.dumps({"final": result}), flush=True)
  return 0


if __name__ == "__main__":
  run_main(main)
