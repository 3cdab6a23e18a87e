"""`python -m t5x_lite.plan --gin_file=MODEL.gin --gin_file=RUN.gin --target=v4-8 [--sweep]`

Compiles the real train step (the Trainer's) for hardware that is not attached and prints one
JSON object: what each device would hold, whether it fits, and the model's train FLOPs per step.
TPU targets use libtpu's compile-only topologies; GPU targets use XLA's GPU compiler with a
target description shipped in t5x_lite/targets/. Their libraries come from `make plan-deps`
and are put on the path of this command alone (a re-exec), never of training or tests.

--sweep compiles remat policies x microbatch counts and lists those that fit, cheapest first:
by FLOP overhead (XLA's cost analysis of the unscanned step on the host CPU, layers extrapolated
linearly), then by microbatches. Gin flags are those of `train`.
"""

from t5x_lite import quiet_startup  # noqa: F401  (first: hides native start-up noise)

# isort: split

import argparse
import dataclasses
import json
import os
import sys
import time

GB = 10**9
GiB = 2**30
_DEPS_ENV = "T5X_LITE_PLAN_DEPS"
TARGETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets")


@dataclasses.dataclass(frozen=True)
class Target:
  platform: str  # "tpu" or "cuda"; also the plan-deps folder
  topology: str  # libtpu topology name, or the GPU topology "hosts x nodes x devices"
  # Bytes one device may use: libtpu's HBM model (its out-of-memory message says the same
  # figure); for GPUs, the share JAX's allocator takes by default (75% of device memory).
  device_bytes: int | None = None
  target_config: str | None = None  # GPU: file in t5x_lite/targets/


TARGETS = {
  "v4-8": Target("tpu", "v4:2x2x1", int(15.25 * GiB)),
  "v4-16": Target("tpu", "v4:2x2x2", int(15.25 * GiB)),
  "v4-32": Target("tpu", "v4:2x2x4", int(15.25 * GiB)),
  "v4-64": Target("tpu", "v4:2x4x4", int(15.25 * GiB)),
  "v5e-8": Target("tpu", "v5e:2x4", int(15.75 * GiB)),
  "v5e-16": Target("tpu", "v5e:4x4", int(15.75 * GiB)),
  "v5e-32": Target("tpu", "v5e:4x8", int(15.75 * GiB)),
  "v5p-8": Target("tpu", "v5p:2x2x1", int(95.74 * GiB)),
  "v6e-8": Target("tpu", "v6e:2x4", int(31.25 * GiB)),
  "h100": Target("cuda", "1x1x1", target_config="h100_sxm.txtpb"),
  "h100x8": Target("cuda", "1x1x8", target_config="h100_sxm.txtpb"),
}
# The default JAX GPU allocator preallocates this share of device memory.
GPU_MEMORY_FRACTION = 0.75


class PlanError(Exception):
  pass


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


# plan-deps folder -> jax's extra that pins its packages.
JAX_EXTRAS = {"tpu": "tpu", "cuda": "cuda12"}


def jax_extra_requirements(platform: str) -> list[str]:
  """The packages the installed jax pins for a platform's extra, less jaxlib (already installed)
  and anything a compile-only run does not load (requests). Used by `make plan-deps`."""
  import importlib.metadata
  import re

  extra = JAX_EXTRAS[platform]
  found = []
  for requirement in importlib.metadata.requires("jax") or []:
    spec, _, marker = requirement.partition(";")
    if re.search(rf"extra\s*==\s*[\"']{extra}[\"']", marker):
      name = re.match(r"[A-Za-z0-9_.-]+", spec.strip()).group(0)
      if name not in ("jaxlib", "requests"):
        found.append(spec.strip())
  return found


def deps_dir(platform: str) -> str:
  """Where `make plan-deps` installs a platform's compiler: beside the environment's packages."""
  root = os.environ.get("T5X_LITE_PLAN_DEPS_DIR") or os.path.join(sys.prefix, "plan-deps")
  return os.path.join(root, platform)


def ensure_platform_libraries(platform: str, argv: list[str]) -> None:
  """Re-executes this command with the target's compiler libraries on its path (once)."""
  if os.environ.get(_DEPS_ENV) == platform:
    return
  path = deps_dir(platform)
  if not os.path.isfile(os.path.join(path, ".installed")):
    _fail(f"the {platform.upper()} compiler for planning is not installed; run `make plan-deps`")
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
  env["JAX_PLATFORMS"] = "cpu"  # compile-only: no backend but the host starts
  env[_DEPS_ENV] = platform
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if platform == "tpu":
    # Compile-only use never opens a chip: don't take (or wait for) libtpu's process lock file.
    env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
  if platform == "cuda":
    # Deviceless Triton GEMM tiling fails ("Couldn't find output tile sizes"); cuBLAS needs none.
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_gpu_enable_triton_gemm=false").strip()
  os.execve(sys.executable, [sys.executable, "-m", "t5x_lite.plan", *argv], env)


def topology_devices(target: Target) -> list:
  from jax.experimental import topologies

  if target.platform == "tpu":
    topo = topologies.get_topology_desc(platform="tpu", topology_name=target.topology)
  else:
    with open(os.path.join(TARGETS_DIR, target.target_config)) as f:
      config_text = f.read()
    topo = topologies.get_topology_desc(
      platform="cuda", target_config=config_text, topology=target.topology
    )
  return list(topo.devices)


def device_bytes(target: Target) -> int:
  if target.device_bytes is not None:
    return target.device_bytes
  with open(os.path.join(TARGETS_DIR, target.target_config)) as f:
    for line in f:
      if line.strip().startswith("device_memory_size:"):
        total = int(line.split(":")[1])
        fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEMORY_FRACTION))
        return int(total * fraction)
  raise PlanError(f"no device_memory_size in {target.target_config}")


@dataclasses.dataclass
class RunSettings:
  """What `train` would use, read from the parsed gin config."""

  batch_size: int
  lengths: dict
  num_partitions: int
  num_microbatches: int
  use_packing: bool


def run_settings() -> RunSettings:
  from t5x_lite import gin_utils

  def value(name, default=None):
    return gin_utils.bound_value(f"train.{name}", default)

  lengths = value("task_feature_lengths")
  batch_size = value("batch_size")
  if not isinstance(batch_size, int) or not lengths:
    raise PlanError(
      "the gin files bind no train.batch_size / train.task_feature_lengths; "
      "add --gin_file=runs/pretrain.gin"
    )
  return RunSettings(
    batch_size,
    dict(lengths),
    value("num_partitions", 1),
    value("num_microbatches", 1),
    value("use_packing", False),
  )


def build_trainer(cfg, devices, settings: RunSettings, num_microbatches: int):
  from t5x_lite import partitioning
  from t5x_lite.models import EncoderDecoderModel
  from t5x_lite.trainer import LossConfig, Trainer

  mesh = partitioning.make_mesh(settings.num_partitions, devices=devices)
  partitioning.check_batch_split(settings.batch_size, mesh, num_microbatches)
  return Trainer(
    EncoderDecoderModel(cfg),
    mesh,
    partitioning.logical_axis_rules(),
    settings.lengths,
    num_microbatches=num_microbatches,
    loss_config=LossConfig(),
  )


_planned: dict = {}  # (config, microbatches, target) -> result: a sweep re-uses the configured step


def plan_one(cfg, target_name: str, devices, settings: RunSettings, num_microbatches: int) -> dict:
  """Compiles one configuration; the JSON object of the fixed keys."""
  key = (cfg, num_microbatches, target_name)
  if key not in _planned:
    _planned[key] = _compile_and_measure(cfg, target_name, devices, settings, num_microbatches)
  return dict(_planned[key])


def attention_kernel(cfg, platform: str, lengths: dict) -> str:
  """The kernel the encoder's self-attention resolves to on `platform` (attention.choose)."""
  from t5x_lite import attention

  with attention.compiling_for(platform):
    length = lengths["inputs"]
    return attention.choose(
      cfg.attention_impl, cfg.dtype, cfg.d_kv, length, length, dropout=cfg.dropout_rate > 0
    )


def _compile_and_measure(
  cfg, target_name: str, devices, settings: RunSettings, num_microbatches: int
) -> dict:
  from t5x_lite import attention, config, memory_fit

  trainer = build_trainer(cfg, devices, settings, num_microbatches)
  target = TARGETS[target_name]
  limit = device_bytes(target)
  start = time.perf_counter()
  # libtpu refuses programs whose temporaries exceed HBM: then temp and total are None, as
  # when the state alone is too large (then nothing is compiled). attention_impl='auto'
  # resolves for the target, not for this process's CPU backend.
  with attention.compiling_for(target.platform):
    fp = memory_fit.measure(trainer, settings.batch_size, settings.use_packing, limit)
  flops = (
    config.train_flops_per_example(cfg, settings.lengths["inputs"], settings.lengths["targets"])
    * settings.batch_size
  )
  return {
    "target": target_name,
    "devices": len(devices),
    "hosts": len({d.process_index for d in devices}),
    "mesh": dict(trainer.mesh.shape),
    "attention": attention_kernel(cfg, target.platform, settings.lengths),
    "per_device_bytes": fp.as_dict(),
    "peak_bytes": fp.peak,
    "device_bytes": limit,
    "fits": fp.fits(limit),
    "train_flops_per_step": flops,
    "compile_s": round(time.perf_counter() - start, 1),
  }


def flops_overhead(cfg, lengths: dict, policies) -> dict[str, float]:
  """Extra train FLOPs of each remat policy over 'none', from XLA's cost analysis of the
  unscanned step on the host CPU for one example. FLOPs are linear in the layer counts, so
  1+1, 2+1 and 1+2 layer models give the per-layer costs of the full depth. Counted with the
  xla attention kernel (a fused kernel is opaque to the cost analysis)."""
  import jax
  import jax.numpy as jnp

  from t5x_lite.models import EncoderDecoderModel

  def step_flops(policy: str, enc: int, dec: int) -> float:
    small = dataclasses.replace(
      cfg,
      scan_layers=False,
      remat_policy=policy,
      num_encoder_layers=enc,
      num_decoder_layers=dec,
      attention_impl="xla",
    )
    model = EncoderDecoderModel(small)
    params = model.abstract_params()
    batch = {
      k: jax.ShapeDtypeStruct(
        (1, lengths["inputs"] if k.startswith("encoder") else lengths["targets"]), jnp.int32
      )
      for k in (
        "encoder_input_tokens",
        "decoder_input_tokens",
        "decoder_target_tokens",
        "decoder_loss_weights",
      )
    }
    grad = jax.jit(jax.grad(lambda p, b: model.loss_fn(p, b)[0]))
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
      analysis = grad.lower(params, batch).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis["flops"])

  def full_depth(policy: str) -> float:
    base = step_flops(policy, 1, 1)
    per_enc = step_flops(policy, 2, 1) - base
    per_dec = step_flops(policy, 1, 2) - base
    return base + (cfg.num_encoder_layers - 1) * per_enc + (cfg.num_decoder_layers - 1) * per_dec

  none = full_depth("none")
  return {p: round(full_depth(p) / none - 1.0, 4) if p != "none" else 0.0 for p in policies}


def sweep(
  cfg, target_name: str, devices, settings: RunSettings, policies: list[str] | None = None
) -> list[dict]:
  """For each remat policy the fewest microbatches that fit; cheapest first."""
  from t5x_lite import memory_fit

  policies = policies or list(memory_fit.POLICIES_BY_COST)
  unknown = [p for p in policies if p not in memory_fit.POLICIES_BY_COST]
  if unknown:
    raise PlanError(
      f"unknown remat policy {unknown[0]!r}; one of {', '.join(memory_fit.POLICIES_BY_COST)}"
    )
  overhead = flops_overhead(cfg, settings.lengths, policies)
  data = len(devices) // settings.num_partitions
  options = []
  for policy in policies:
    for count in [
      n for _, n in memory_fit.candidates(policy, 1, settings.batch_size // data) if _ == policy
    ]:
      row = plan_one(
        dataclasses.replace(cfg, remat_policy=policy), target_name, devices, settings, count
      )
      print(
        json.dumps(
          {
            "remat_policy": policy,
            "num_microbatches": count,
            "fits": row["fits"],
            "total": row["per_device_bytes"]["total"],
          }
        ),
        file=sys.stderr,
        flush=True,
      )
      if row["fits"]:
        options.append(
          {
            **row,
            "remat_policy": policy,
            "num_microbatches": count,
            "flops_overhead": overhead[policy],
          }
        )
        break
  return sorted(options, key=lambda o: (o["flops_overhead"], o["num_microbatches"]))


def fit(cfg, target_name: str, devices, settings: RunSettings) -> dict:
  """memory_fit's choice (the configured pair if it fits, else the first candidate that does);
  if none does, the configured step's result (fits: false)."""
  from t5x_lite import memory_fit

  data = len(devices) // settings.num_partitions

  def row(policy: str, count: int) -> dict:
    result = plan_one(
      dataclasses.replace(cfg, remat_policy=policy), target_name, devices, settings, count
    )
    return {**result, "remat_policy": policy, "num_microbatches": count}

  def measure_one(policy: str, count: int):
    return memory_fit.Footprint(**row(policy, count)["per_device_bytes"])

  configured = (cfg.remat_policy, settings.num_microbatches)
  found = memory_fit.choose(
    memory_fit.candidates(*configured, settings.batch_size // data),
    measure_one,
    device_bytes(TARGETS[target_name]),
  )
  return row(*(found[0] if found else configured))


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(prog="python -m t5x_lite.plan", description=__doc__)
  parser.add_argument("--target", required=True, help=", ".join(TARGETS))
  parser.add_argument(
    "--sweep",
    action="store_true",
    help="list the remat policy / microbatch counts that fit, cheapest first",
  )
  parser.add_argument(
    "--fit",
    action="store_true",
    help="as train.memory_fit='auto' would: the configured step if it fits, else "
    "the first remat policy / microbatch count that does",
  )
  parser.add_argument(
    "--remat_policies", default=None, help="comma-separated remat policies to sweep (default: all)"
  )
  # Gin flags are separated before argparse sees them (their values may look like flags).
  from t5x_lite import gin_utils
  from t5x_lite.errors import UserError, first_line

  try:
    gin_files, gin_bindings, rest = gin_utils.split_gin_flags(argv)
  except UserError as e:
    _fail(str(e))
  args = parser.parse_args(rest)
  if args.target not in TARGETS:
    _fail(f"unknown --target {args.target!r}; one of {', '.join(TARGETS)}")
  if not gin_files:
    _fail(
      "no --gin_file given; e.g. --gin_file=models/t5_efficient_base.gin "
      "--gin_file=runs/pretrain.gin"
    )
  target = TARGETS[args.target]
  ensure_platform_libraries(target.platform, argv)

  try:
    from t5x_lite import config, memory_fit, run_setup, training  # noqa: F401  (configurables)

    run_setup.parse_run_config(gin_files, gin_bindings, reads_data=False)  # no data, no TF
    settings = run_settings()
    with gin_utils.required_bindings_checked():
      cfg = config.model_config()
    devices = topology_devices(target)
    if args.sweep:
      result = plan_one(cfg, args.target, devices, settings, settings.num_microbatches)
      result["remat_policy"] = cfg.remat_policy
      result["num_microbatches"] = settings.num_microbatches
      policies = args.remat_policies.split(",") if args.remat_policies else None
      result["options"] = sweep(cfg, args.target, devices, settings, policies)
    elif args.fit:
      result = fit(cfg, args.target, devices, settings)
    else:
      result = plan_one(cfg, args.target, devices, settings, settings.num_microbatches)
  except (UserError, PlanError) as e:
    _fail(first_line(e, limit=None))
  print(json.dumps(result), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
