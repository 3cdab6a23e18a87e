"""The hardware table (README "Hardware", docs/hardware.md): `plan --fit` per model and target.

  python benchmarks/hardware_table.py --cache=runs/hardware_plan.json     # after `make plan-deps`

Each (model, target) is planned with the recipe (runs/pretrain.gin: batch 128, inputs 512 /
targets 114, bfloat16) as train.memory_fit='auto' would run it: the configured remat policy and
microbatches if they fit, else the first cheaper-in-memory choice that does. For TPUs the
smallest slice of each generation where the model fits is shown. Results are cached in --cache
(one compile can take minutes on a small host), so an interrupted run resumes. A `plan --fit`
that runs past --minutes or --host_gb is stopped and shown as a 'not measured' row (and tried
again by a later run with larger limits); a model whose state and gradients alone exceed a
device is answered without compiling.
"""

import argparse
import json
import os
import subprocess
import sys
import time

MODELS = ("tiny", "tiny_nl32", "mini", "small", "base", "large", "xl", "xxl")
GPU_TARGETS = ("h100", "h100x8")
TPU_SLICES = {"v4": ("v4-8", "v4-16", "v4-32", "v4-64"), "v5e": ("v5e-8", "v5e-16", "v5e-32")}
GB = 1e9
# Too large to replicate on one device's memory: planned with runs/fsdp.gin (parameters and
# optimizer state split over `data`) on every target.
FSDP_MODELS = ("xl", "xxl")


def plan(
  model: str, target: str, extra: list[str], cache: dict, cache_path: str, limits: "Limits"
) -> dict:
  key = f"{model} {target} {' '.join(extra)}".strip()
  cached = cache.get(key)
  # A compile stopped at a smaller limit is tried again under a larger one.
  if cached is None or "not_measured" in cached and limits.exceed(cached["limits"]):
    cmd = [
      sys.executable,
      "-m",
      "t5x_lite.plan",
      f"--gin_file=models/t5_efficient_{model}.gin",
      "--gin_file=runs/pretrain.gin",
      *extra,
      f"--target={target}",
      "--fit",
    ]
    cache[key] = run_within(cmd, limits) | {"target": target}
    with open(cache_path, "w") as f:
      json.dump(cache, f, indent=1)
  print(key, json.dumps(cache[key]), file=sys.stderr, flush=True)
  return cache[key]


class Limits:
  """How long and how much host memory one `plan --fit` may take (its compiles together)."""

  def __init__(self, minutes: float, host_gb: float):
    self.minutes, self.host_gb = minutes, host_gb

  def as_dict(self) -> dict:
    return {"minutes": self.minutes, "host_gb": self.host_gb}

  def exceed(self, other: dict) -> bool:
    return self.minutes > other["minutes"] or self.host_gb > other["host_gb"]


def run_within(cmd: list[str], limits: Limits) -> dict:
  """The JSON `plan` prints, or {"not_measured": why} if it ran past the limits (then stopped)."""
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  start, why = time.monotonic(), None
  while proc.poll() is None and why is None:
    time.sleep(1)
    if time.monotonic() - start > 60 * limits.minutes:
      why = f"compile over {limits.minutes:g} min"
    elif host_rss_gb(proc.pid) > limits.host_gb:
      why = f"compile over {limits.host_gb:g} GB of host memory"
  if why is not None:
    proc.kill()
    proc.communicate()
    return {"not_measured": why, "limits": limits.as_dict()}
  out, err = proc.communicate()
  if proc.returncode != 0:
    raise SystemExit(f"{' '.join(cmd)} failed: {err.strip().splitlines()[-1:]}")
  return json.loads(out.strip().splitlines()[-1])


def host_rss_gb(pid: int) -> float:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) * 1024 / GB
  except OSError:
    pass  # exited, or no /proc (then only the time limit applies)
  return 0.0


def row(model: str, result: dict) -> str:
  name = f"t5-efficient-{model.replace('_', '-')}"
  if "not_measured" in result:
    return f"| {name} | {result['target']} | | | not measured ({result['not_measured']}) | | |"
  mesh = " × ".join(f"{n} {a}" for a, n in result["mesh"].items())
  if model in FSDP_MODELS:
    mesh += " (fsdp)"
  per_device = result["per_device_bytes"]
  state_and_gradients = 2 * per_device["params"] + per_device["opt_state"]
  if per_device["total"] is not None:
    total = f"{per_device['total'] / GB:.1f}"
  elif state_and_gradients > result["device_bytes"]:
    total = f"> {state_and_gradients / GB:.1f} (state + gradients)"
  else:
    total = "> HBM"
  return (
    f"| {name} | {result['target']} | {mesh} | "
    f"{result['remat_policy']} / {result['num_microbatches']} | {total} | "
    f"{result['device_bytes'] / GB:.1f} | {'yes' if result['fits'] else 'no'} |"
  )


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cache", default="runs/hardware_plan.json")
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--tpu", default=",".join(TPU_SLICES), help="TPU generations")
  parser.add_argument("--gpu", default=",".join(GPU_TARGETS), help="GPU targets ('' for none)")
  parser.add_argument(
    "--minutes",
    type=float,
    default=30.0,
    help="stop one `plan --fit` after this long: a 'not measured' row",
  )
  parser.add_argument(
    "--host_gb",
    type=float,
    default=5.0,
    help="stop one `plan --fit` above this host memory: a 'not measured' row",
  )
  args = parser.parse_args()
  limits = Limits(args.minutes, args.host_gb)
  cache = {}
  if os.path.exists(args.cache):
    with open(args.cache) as f:
      cache = json.load(f)
  os.makedirs(os.path.dirname(os.path.abspath(args.cache)), exist_ok=True)
  lines = [
    "| model | target | mesh | remat / microbatches | GB per device | usable GB | fits |",
    "|---|---|---|---|---|---|---|",
  ]
  for model in args.models.split(","):
    extra = ["--gin_file=runs/fsdp.gin"] if model in FSDP_MODELS else []
    for target in filter(None, args.gpu.split(",")):
      lines.append(row(model, plan(model, target, extra, cache, args.cache, limits)))
    for generation in filter(None, args.tpu.split(",")):
      for target in TPU_SLICES[generation]:
        result = plan(model, target, extra, cache, args.cache, limits)
        # A slice not measured is shown: whether it fits is not known, so neither is the smallest.
        if result.get("fits") or "not_measured" in result or target == TPU_SLICES[generation][-1]:
          lines.append(row(model, result))
          break
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
