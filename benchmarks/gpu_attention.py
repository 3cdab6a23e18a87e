"""Attention kernels A/B on one GPU, in one process: T5's XLA core against cuDNN's fused attention.

  python benchmarks/gpu_attention.py                    # on a GPU: the defaults below
  python benchmarks/gpu_attention.py --trace_dir=/tmp/trace --gpu_flags=latency_hiding
  python benchmarks/gpu_attention.py --small            # anywhere: tiny shapes, a few steps

Defaults: t5-efficient-base and t5-efficient-tiny-nl32, bfloat16, batch 128, inputs 512 /
targets 114, the recipe's train step (Trainer: per-layer Adafactor, z-loss) on one device, for
each (remat policy, microbatches) in --configs. Per model, configuration and kernel:
  step time, tokens/s, MFU on exact FLOPs (config.train_flops_per_example, flops.py's peak),
  the compiled step's bytes per device (XLA's memory analysis) and the process's peak so far;
  agreement: loss and relative-position table gradients of cudnn vs xla from the same parameters
  on a batch with padding, within bfloat16 tolerance;
  loss curves: --curve_steps train steps from the same initial state and batches, compared.
Prints a table, then one JSON object (last line).

Without a GPU, cudnn cannot run: the 'fused' side then runs the same code path through
jax.nn.dot_product_attention's XLA implementation (said in the output), which checks the script
and the layout/mask/bias handling, not cuDNN. --gpu_flags sets XLA flags seen in T5X/MaxText GPU
recipes for the whole process; compare them by running the script once per setting (none are
defaults: nothing here has measured them yet).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> (XLA flags, environment). Process-wide: set before jax starts.
GPU_FLAGS = {
  "latency_hiding": (["--xla_gpu_enable_latency_hiding_scheduler=true"], {}),
  "while_double_buffering": (["--xla_gpu_enable_while_loop_double_buffering=true"], {}),
  "no_command_buffer": (["--xla_gpu_enable_command_buffer="], {}),
  "max_connections_1": ([], {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}),
}
SMALL = dict(
  models="t5-efficient-tiny-nl2",
  batch=4,
  inputs=32,
  targets=8,
  steps=2,
  curve_steps=4,
  configs="none:1",
)
# bfloat16 agreement: relative error of the loss and of each relative-position table's gradient.
LOSS_RTOL = 1e-2
GRAD_RTOL = 5e-2


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="t5-efficient-base,t5-efficient-tiny-nl32")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=114)
  parser.add_argument("--steps", type=int, default=10, help="timed steps after one warm-up")
  parser.add_argument("--curve_steps", type=int, default=100)
  parser.add_argument(
    "--configs",
    default="none:1,lean:1",
    help="comma-separated remat_policy:num_microbatches (a step that does not fit is reported)",
  )
  parser.add_argument("--trace_dir", default=None, help="write a jax.profiler trace per run")
  parser.add_argument("--gpu_flags", default="", help=f"comma-separated: {', '.join(GPU_FLAGS)}")
  parser.add_argument("--small", action="store_true", help="tiny shapes: a CPU smoke run")
  if parser.parse_args(argv).small:  # new defaults: flags given with --small still apply
    parser.set_defaults(**SMALL)
  return parser.parse_args(argv)


def set_gpu_flags(names: str) -> list[str]:
  flags = []
  for name in filter(None, names.split(",")):
    if name not in GPU_FLAGS:
      raise SystemExit(f"error: unknown --gpu_flags {name!r}; one of {', '.join(GPU_FLAGS)}")
    xla, env = GPU_FLAGS[name]
    flags += xla
    os.environ.update(env)
  if flags:
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()
  return flags


def padded_batch(batch_size: int, lengths: dict, vocab: int, seed: int):
  """Random tokens; a quarter of the rows padded from mid-sequence (as short examples are)."""
  from cpu_throughput import make_batch

  batch = make_batch(batch_size, lengths["inputs"], lengths["targets"], vocab, seed)
  for row in range(0, batch_size, 4):
    batch["encoder_input_tokens"][row, lengths["inputs"] // 2 :] = 0
    batch["decoder_target_tokens"][row, lengths["targets"] // 2 :] = 0
    batch["decoder_input_tokens"][row, lengths["targets"] // 2 + 1 :] = 0
  # int32, as the data pipeline delivers it (the compiled step takes exactly those types).
  batch["decoder_loss_weights"] = (batch["decoder_target_tokens"] > 0).astype("int32")
  return batch


class Side:
  """One kernel's trainer, state and step, traced for the kernel it names."""

  def __init__(self, cfg, lengths: dict, num_microbatches: int, fused_stand_in: bool):
    import jax

    from t5x_lite import attention, partitioning
    from t5x_lite.models import EncoderDecoderModel
    from t5x_lite.trainer import Trainer

    self.cfg, self.jax, self.attention = cfg, jax, attention
    self.fused_stand_in = fused_stand_in and cfg.attention_impl == "cudnn"
    mesh = partitioning.make_mesh(1, devices=jax.devices()[:1])
    self.trainer = Trainer(
      EncoderDecoderModel(cfg), mesh, partitioning.DEFAULT_RULES, lengths, num_microbatches
    )
    self.model = self.trainer.model

  def tracing(self):
    """Where cuDNN cannot run, the fused path goes through jax's XLA implementation."""
    import contextlib

    if not self.fused_stand_in:
      return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(self.attention.compiling_for("gpu"))
    saved = dict(self.attention.JAX_IMPLEMENTATION)
    self.attention.JAX_IMPLEMENTATION["cudnn"] = "xla"
    stack.callback(self.attention.JAX_IMPLEMENTATION.update, saved)
    return stack

  def compile(self, batch_size: int) -> int:
    """Compiles the trainer's step once (what every step then runs); its bytes per device."""
    from t5x_lite import memory_fit

    with self.tracing():
      compiled, state, batch = memory_fit.compile_train_step(self.trainer, batch_size)
    self.compiled = compiled
    return memory_fit.footprint(compiled, state, batch).total

  def init(self):
    return self.trainer.init_state(0)

  def step(self, state, batch):
    return self.compiled(state, self.trainer.make_global_batch(batch))

  def loss_and_table_grads(self, params, batch):
    jax = self.jax

    def loss(p):
      return self.model.loss_fn(p, batch)[0]

    with self.tracing():
      value, grads = jax.jit(jax.value_and_grad(loss))(params)
    tables = {s: grads[s]["relpos_bias"]["rel_embedding"] for s in ("encoder", "decoder")}
    return float(value), jax.device_get(tables)


def peak_memory_gb():
  import jax

  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return peak and round(peak / 2**30, 2)


def time_steps(side: Side, batch: dict, steps: int, trace_dir: str | None, label: str) -> float:
  import jax

  state = side.init()
  state, metrics = side.step(state, batch)  # warm-up
  jax.block_until_ready(metrics)
  if trace_dir:
    jax.profiler.start_trace(os.path.join(trace_dir, label))
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = side.step(state, batch)
  jax.block_until_ready(metrics)
  elapsed = (time.perf_counter() - start) / steps
  if trace_dir:
    jax.profiler.stop_trace()
  return elapsed


def loss_curve(side: Side, batches: list) -> list[float]:
  state = side.init()
  curve = []
  for batch in batches:
    state, metrics = side.step(state, batch)
    curve.append(float(side.jax.device_get(metrics["loss"])))
  return curve


def relative_error(a, b) -> float:
  import numpy as np

  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def compare_model(name: str, args, lengths: dict, fused_stand_in: bool) -> list[dict]:
  import dataclasses

  import numpy as np

  from t5x_lite import config, flops, memory_fit

  rows = []
  base = dataclasses.replace(config.resolve_model_name(name), dtype="bfloat16")
  peak = flops.peak_flops_per_device()
  flops_per_step = config.train_flops_per_example(base, args.inputs, args.targets) * args.batch
  tokens_per_step = args.batch * (args.inputs + args.targets)
  timing_batch = padded_batch(args.batch, lengths, base.vocab_size, seed=0)
  curve_batches = [
    padded_batch(args.batch, lengths, base.vocab_size, seed=1 + i) for i in range(args.curve_steps)
  ]
  for spec in args.configs.split(","):
    policy, microbatches = spec.split(":")
    sides = {}
    for kernel in ("xla", "cudnn"):
      cfg = dataclasses.replace(base, remat_policy=policy, attention_impl=kernel)
      sides[kernel] = Side(cfg, lengths, int(microbatches), fused_stand_in)
    results = {}
    for kernel, side in sides.items():
      row = {"model": name, "remat_policy": policy, "microbatches": int(microbatches)}
      row["attention"] = kernel if kernel == "xla" or not fused_stand_in else "fused (xla stand-in)"
      try:
        row["compiled_gb"] = round(side.compile(args.batch) / 2**30, 2)
        label = f"{name}-{policy}-{microbatches}-{kernel}"
        step_s = time_steps(side, timing_batch, args.steps, args.trace_dir, label)
      except Exception as e:  # noqa: BLE001  (an allocation failure is a result, not a crash)
        if not memory_fit.is_out_of_memory(e):
          raise
        row["error"] = "out of memory"
        rows.append(row)
        continue
      row.update(
        step_s=round(step_s, 4),
        tokens_per_s=round(tokens_per_step / step_s),
        mfu=peak and round(flops_per_step / step_s / peak, 4),
        peak_memory_gb_so_far=peak_memory_gb(),
      )
      results[kernel] = side
      rows.append(row)
    if len(results) < 2:
      continue
    params = sides["xla"].init().params
    loss_x, tables_x = sides["xla"].loss_and_table_grads(params, timing_batch)
    loss_c, tables_c = sides["cudnn"].loss_and_table_grads(params, timing_batch)
    curves = {k: loss_curve(s, curve_batches) for k, s in sides.items()}
    gaps = np.abs(np.asarray(curves["cudnn"]) - np.asarray(curves["xla"]))
    agreement = {
      "loss_rel_err": relative_error(loss_c, loss_x),
      **{f"{s}_table_grad_rel_err": relative_error(tables_c[s], tables_x[s]) for s in tables_x},
      "curve_max_abs_gap": float(gaps.max()) if gaps.size else None,
      "curve_final_losses": [curves["xla"][-1], curves["cudnn"][-1]] if gaps.size else None,
    }
    agreement["agrees"] = agreement["loss_rel_err"] < LOSS_RTOL and all(
      agreement[f"{s}_table_grad_rel_err"] < GRAD_RTOL for s in tables_x
    )
    rows[-1]["agreement"] = agreement
  return rows


def print_table(rows: list[dict]) -> None:
  header = ("model", "remat", "mb", "attention", "step s", "tokens/s", "MFU", "compiled GB")
  print(" | ".join(header))
  for r in rows:
    cells = (
      r["model"],
      r["remat_policy"],
      r["microbatches"],
      r["attention"],
      r.get("step_s", r.get("error")),
      r.get("tokens_per_s", ""),
      f"{r['mfu']:.1%}" if r.get("mfu") else "",
      r.get("compiled_gb", ""),
    )
    print(" | ".join(str(c) for c in cells))
    if "agreement" in r:
      print(f"  cudnn vs xla: {json.dumps(r['agreement'])}")


def main(argv=None) -> int:
  args = parse_args(argv)
  flags = set_gpu_flags(args.gpu_flags)
  import jax

  device = jax.local_devices()[0]
  fused_stand_in = device.platform != "gpu"
  if fused_stand_in:
    print(
      f"note: no GPU ({device.platform}): cuDNN cannot run; the fused side runs the same code "
      "through jax.nn.dot_product_attention(implementation='xla')",
      flush=True,
    )
  lengths = {"inputs": args.inputs, "targets": args.targets}
  rows = []
  for name in args.models.split(","):
    rows += compare_model(name, args, lengths, fused_stand_in)
  print_table(rows)
  summary = {
    "device": device.device_kind,
    "jax": jax.__version__,
    "batch": args.batch,
    "lengths": lengths,
    "xla_flags": flags,
    "fused_stand_in": fused_stand_in,
    "rows": rows,
  }
  print(json.dumps(summary), flush=True)
  return 0 if all(r["agreement"]["agrees"] for r in rows if "agreement" in r) else 1


if __name__ == "__main__":
  sys.exit(main())
