"""Runs the CPU benchmarks one after another (they would disturb each other side by side).

  python benchmarks/run_all.py [--quick] [--t5_python=/path/to/venv-with-t5/bin/python]

--quick shortens every benchmark (fewer rounds and examples) for a smoke check.
On an accelerator host, run benchmarks/gpu_throughput.py separately.
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument(
    "--t5_python",
    default=None,
    help="interpreter with the public `t5` package, for the data comparison",
  )
  args = parser.parse_args()
  quick = args.quick
  runs = [
    ["cpu_throughput.py", "--also_unrolled"] + (["--rounds=2", "--steps=1"] if quick else []),
    ["startup.py", "--pairs=tiny"] + (["--repeats=1"] if quick else []),
    ["data_pipeline.py"]
    + (["--examples=500"] if quick else ["--examples=2000", "--repeats=2"])
    + ([f"--t5_python={args.t5_python}"] if args.t5_python else ["--stages=masking,tokenized"]),
  ]
  failed = 0
  for run in runs:
    print(f"\n=== {' '.join(run)}", flush=True)
    failed |= subprocess.call([sys.executable, os.path.join(HERE, run[0])] + run[1:])
  return failed


if __name__ == "__main__":
  sys.exit(main())
