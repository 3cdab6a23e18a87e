"""The README's "Hardware" table: `python -m t5x_lite.plan --fit` for each model and target.

  python benchmarks/hardware_table.py --cache=runs/hardware_plan.json     # after `make plan-deps`

Each (model, target) is planned with the recipe (runs/pretrain.gin: batch 128, inputs 512 /
targets 114, bfloat16) as train.memory_fit='auto' would run it: the configured remat policy and
microbatches if they fit, else the first cheaper-in-memory choice that does. For TPUs the
smallest slice of each generation where the model fits is shown. Results are cached in --cache
(one compile can take minutes on a small host), so an interrupted run resumes.
"""

import argparse
import json
import os
import subprocess
import sys

MODELS = ("tiny", "tiny_nl32", "mini", "small", "base", "large", "xl", "xxl")
GPU_TARGETS = ("h100", "h100x8")
TPU_SLICES = {"v4": ("v4-8", "v4-16", "v4-32", "v4-64"), "v5e": ("v5e-8", "v5e-16", "v5e-32")}
GB = 1e9
# Too large to replicate on one device's memory: planned with runs/fsdp.gin (parameters and
# optimizer state split over `data`) on every target.
FSDP_MODELS = ("xl", "xxl")


def plan(model: str, target: str, extra: list[str], cache: dict, cache_path: str) -> dict:
  key = f"{model} {target} {' '.join(extra)}".strip()
  if key not in cache:
    cmd = [sys.executable, "-m", "t5x_lite.plan", f"--gin_file=models/t5_efficient_{model}.gin",
           "--gin_file=runs/pretrain.gin", *extra, f"--target={target}", "--fit"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    cache[key] = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(cache_path, "w") as f:
      json.dump(cache, f, indent=1)
  print(key, json.dumps(cache[key]), file=sys.stderr, flush=True)
  return cache[key]


def row(model: str, result: dict) -> str:
  mesh = " × ".join(f"{n} {a}" for a, n in result["mesh"].items())
  if model in FSDP_MODELS:
    mesh += " (fsdp)"
  per_device = result["per_device_bytes"]
  total = f"{per_device['total'] / GB:.1f}" if per_device["total"] is not None else "> HBM"
  return (f"| t5-efficient-{model.replace('_', '-')} | {result['target']} | {mesh} | "
          f"{result['remat_policy']} / {result['num_microbatches']} | {total} | "
          f"{result['device_bytes'] / GB:.1f} | {'yes' if result['fits'] else 'no'} |")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cache", default="runs/hardware_plan.json")
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--tpu", default=",".join(TPU_SLICES), help="TPU generations")
  args = parser.parse_args()
  cache = {}
  if os.path.exists(args.cache):
    with open(args.cache) as f:
      cache = json.load(f)
  os.makedirs(os.path.dirname(os.path.abspath(args.cache)), exist_ok=True)
  lines = ["| model | target | mesh | remat / microbatches | GB per device | usable GB | fits |",
           "|---|---|---|---|---|---|---|"]
  for model in args.models.split(","):
    extra = ["--gin_file=runs/fsdp.gin"] if model in FSDP_MODELS else []
    for target in GPU_TARGETS:
      lines.append(row(model, plan(model, target, extra, cache, args.cache)))
    for generation in args.tpu.split(","):
      for target in TPU_SLICES[generation]:
        result = plan(model, target, extra, cache, args.cache)
        if result["fits"] or target == TPU_SLICES[generation][-1]:
          lines.append(row(model, result))
          break
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
