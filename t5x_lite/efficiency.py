"""`python -m t5x_lite.efficiency NAME... [--csv FILE] [--markdown] [--plot FILE.png]`

The three numbers "Scale Efficiently" compares variants by, side by side for each model name:
parameters (and the weights' memory), FLOPs per token, and speed measured on this device: a short
training run after compilation (step time, examples/s, tokens/s, peak memory where the device
reports it) and greedy decoding with the key/value cache (decoded tokens/s). With several names,
each is measured in a child process of its own, so that compilation caches and peak memory of one
model do not touch the next.

Lengths and batch default to the recipe (inputs 512 / targets 114, batch 128, bfloat16) on an
accelerator and to small ones on CPU (inputs 128 / targets 32, batch 8, float32); flags override.
Prints one table (markdown with --markdown); --csv and --plot write files as well.
"""

from t5x_lite import quiet_startup  # noqa: F401  (first: hides native start-up noise)

# isort: split

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

from t5x_lite import config
from t5x_lite.errors import UserError, run_main

# (input_length, target_length, batch_size, decode_length, dtype) by platform.
RECIPE = (512, 114, 128, 114, "bfloat16")
CPU_DEFAULTS = (128, 32, 8, 32, "float32")

# Column -> header for the printed table (every measured field is also in the CSV).
TABLE = (
  ("name", "model"),
  ("num_params", "params"),
  ("weights_float32_MB", "fp32 MB"),
  ("weights_bfloat16_MB", "bf16 MB"),
  ("train_gflops_per_token", "train GFLOPs/token"),
  ("kv_cache_bytes_per_token", "KV cache B/token"),
  ("step_ms", "step ms"),
  ("examples_per_s", "examples/s"),
  ("tokens_per_s", "tokens/s"),
  ("decode_tokens_per_s", "decode tokens/s"),
  ("peak_memory_MB", "peak MB"),
)


@dataclasses.dataclass(frozen=True)
class Settings:
  input_length: int
  target_length: int
  batch_size: int
  decode_length: int
  dtype: str
  steps: int
  decode_repeats: int


def random_batch(
  batch_size: int, input_length: int, target_length: int, vocab_size: int, seed: int = 0
) -> dict[str, np.ndarray]:
  """Full-length, unpadded examples: every position is computed and counted."""
  rng = np.random.default_rng(seed)
  inputs = rng.integers(2, vocab_size, (batch_size, input_length), dtype=np.int32)
  targets = rng.integers(2, vocab_size, (batch_size, target_length), dtype=np.int32)
  decoder_inputs = np.concatenate([np.zeros((batch_size, 1), np.int32), targets[:, :-1]], axis=1)
  return {
    "encoder_input_tokens": inputs,
    "decoder_input_tokens": decoder_inputs,
    "decoder_target_tokens": targets,
    "decoder_loss_weights": np.ones_like(targets, dtype=np.float32),
  }


def _peak_memory_bytes(device) -> int | None:
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def paper_metrics(cfg: config.T5Config, s: Settings) -> dict:
  """Parameters, weight memory, FLOPs and cache size: computed, not measured."""
  from t5x_lite import models  # Flax: imported when counting, so the CLI starts fast.

  bytes_per_value = 2 if s.dtype == "bfloat16" else 4
  return {
    "name": cfg.name,
    "num_params": models.num_params(cfg),
    "weights_float32_MB": round(models.weight_bytes(cfg, 4) / 1e6, 2),
    "weights_bfloat16_MB": round(models.weight_bytes(cfg, 2) / 1e6, 2),
    "train_gflops_per_token": _significant(
      config.flops_per_token(cfg, s.input_length, s.target_length) / 1e9
    ),
    "inference_gflops_per_token": _significant(
      config.inference_flops_per_token(cfg, s.input_length, s.target_length) / 1e9
    ),
    "kv_cache_bytes_per_token": config.kv_cache_bytes_per_token(cfg, bytes_per_value),
  }


def measure(name: str, s: Settings) -> dict:
  """Trains `s.steps` steps and decodes `s.decode_repeats` batches of `name` on this process's
  devices (data parallel over all of them); returns paper metrics and measurements as one row."""
  import jax

  cfg = dataclasses.replace(config.resolve_model_name(name), dtype=s.dtype)
  devices = jax.devices()
  if s.batch_size % len(devices):
    raise UserError(f"--batch_size {s.batch_size} must be a multiple of the {len(devices)} devices")
  row = {
    **paper_metrics(cfg, s),
    "device": f"{len(devices)}x {devices[0].device_kind}",
    "dtype": s.dtype,
    "batch_size": s.batch_size,
    "input_length": s.input_length,
    "target_length": s.target_length,
    "decode_length": s.decode_length,
  }
  trainer = _trainer(cfg, devices, s)
  batch = random_batch(s.batch_size, s.input_length, s.target_length, cfg.vocab_size)
  params, training = _time_training(trainer, batch, s)
  row.update(training)
  row["peak_memory_MB"] = _mb(_peak_memory_bytes(devices[0]))
  row.update(_time_decoding(trainer, params, batch["encoder_input_tokens"], s))
  row["peak_memory_with_decode_MB"] = _mb(_peak_memory_bytes(devices[0]))
  return row


def _trainer(cfg: config.T5Config, devices: list, s: Settings):
  """A data-parallel Trainer of `cfg` over `devices`."""
  from t5x_lite import partitioning
  from t5x_lite.models import EncoderDecoderModel
  from t5x_lite.trainer import Trainer

  return Trainer(
    EncoderDecoderModel(cfg),
    partitioning.make_mesh(1, devices=devices),
    partitioning.logical_axis_rules(),
    {"inputs": s.input_length, "targets": s.target_length},
  )


def _time_training(trainer, batch: dict, s: Settings) -> tuple[dict, dict]:
  """Compiles the train step, then times `s.steps` steps on `batch`; returns the trained params
  and the row's training fields."""
  import jax

  cfg = trainer.model.cfg
  state = trainer.init_state(0)
  start = time.perf_counter()
  state, metrics = trainer.train_step(state, batch)
  jax.block_until_ready(metrics)
  compile_s = round(time.perf_counter() - start, 2)
  start = time.perf_counter()
  for _ in range(s.steps):
    state, metrics = trainer.train_step(state, batch)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - start) / s.steps
  if not np.isfinite(float(metrics["loss"])):
    raise UserError(f"{cfg.name}: the training loss is not finite; the measurement is void")
  flops_per_example = config.train_flops_per_example(cfg, s.input_length, s.target_length)
  return state.params, {
    "compile_s": compile_s,
    "step_ms": round(step_s * 1e3, 2),
    "examples_per_s": round(s.batch_size / step_s, 2),
    "tokens_per_s": round(s.batch_size * (s.input_length + s.target_length) / step_s, 1),
    "train_tflops_per_s": _significant(flops_per_example * s.batch_size / step_s / 1e12),
  }


def _time_decoding(trainer, params, inputs: np.ndarray, s: Settings) -> dict:
  """Compiles greedy decoding, then times `s.decode_repeats` calls on `inputs`; returns the
  row's decoding fields."""
  import jax

  from t5x_lite import partitioning

  # Decoding always runs all decode_length steps (the batch has no EOS to stop at), so each
  # timed call decodes batch_size * decode_length tokens.
  decode = jax.jit(trainer.model.greedy_decode, static_argnums=2)
  inputs = jax.device_put(inputs, trainer.batch_sharding)
  with partitioning.activate(trainer.mesh, partitioning.logical_axis_rules()):
    jax.block_until_ready(decode(params, inputs, s.decode_length))
    start = time.perf_counter()
    for _ in range(s.decode_repeats):
      tokens = decode(params, inputs, s.decode_length)
    jax.block_until_ready(tokens)
  decode_s = (time.perf_counter() - start) / s.decode_repeats
  return {
    "decode_ms": round(decode_s * 1e3, 2),
    "decode_tokens_per_s": round(s.batch_size * s.decode_length / decode_s, 1),
  }


def _significant(x: float, digits: int = 4) -> float:
  return float(f"{x:.{digits}g}")


def _mb(num_bytes: int | None) -> float | None:
  return None if num_bytes is None else round(num_bytes / 1e6, 1)


def measure_in_child(name: str, s: Settings) -> dict:
  """`measure` in a fresh interpreter (own compilation and peak memory); returns its row."""
  cmd = [sys.executable, "-m", "t5x_lite.efficiency", name, "--jsonl", *settings_flags(s)]
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode != 0:
    tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise UserError(f"measuring {name} failed: {tail}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def settings_flags(s: Settings) -> list[str]:
  return [f"--{f.name}={getattr(s, f.name)}" for f in dataclasses.fields(s)]


# -- output ------------------------------------------------------------------------------------


def _cell(value) -> str:
  if value is None:
    return "n/a"
  if isinstance(value, int) and not isinstance(value, bool):
    return f"{value:,}"
  return str(value)


def markdown_table(rows: list[dict]) -> str:
  lines = ["| " + " | ".join(h for _, h in TABLE) + " |", "|" + "---|" * len(TABLE)]
  lines += ["| " + " | ".join(_cell(r.get(k)) for k, _ in TABLE) + " |" for r in rows]
  return "\n".join(lines)


def plain_table(rows: list[dict]) -> str:
  cells = [[h for _, h in TABLE]] + [[_cell(r.get(k)) for k, _ in TABLE] for r in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(TABLE))]
  return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def write_csv(rows: list[dict], path: str) -> None:
  fields = list(dict.fromkeys(k for row in rows for k in row))
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
  """Indices of the points no other point beats: lower or equal cost with strictly more speed,
  or strictly lower cost with equal or more speed. Sorted by cost."""
  front = [
    i
    for i, (cost, speed) in enumerate(points)
    if not any((c <= cost and v > speed) or (c < cost and v >= speed) for c, v in points)
  ]
  return sorted(front, key=lambda i: points[i][0])


def plot(rows: list[dict], path: str) -> None:
  """Two quality-free Pareto views: params vs training speed, training FLOPs/token vs speed."""
  try:
    import matplotlib
  except ImportError:
    raise UserError("--plot needs matplotlib: pip install -e '.[plot]'") from None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  speed = [r["examples_per_s"] for r in rows]
  labels = [r["name"].removeprefix("t5-efficient-") for r in rows]
  views = (
    ("num_params", 1e-6, "parameters (millions)"),
    ("train_gflops_per_token", 1.0, "training GFLOPs per token"),
  )
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  for ax, (key, scale, xlabel) in zip(axes, views):
    cost = [float(r[key]) * scale for r in rows]
    ax.scatter(cost, speed, color="tab:blue")
    for x, y, label in zip(cost, speed, labels):
      ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = pareto_front(list(zip(cost, speed)))
    ax.plot(
      [cost[i] for i in front],
      [speed[i] for i in front],
      "--",
      color="tab:orange",
      label="Pareto front",
    )
    if max(cost) > 10 * min(cost):  # A wide zoo reads better on a log axis.
      ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("training examples / s (measured)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
  first = rows[0]
  fig.suptitle(
    f"{first['device']}, {first['dtype']}, batch {first['batch_size']}, "
    f"inputs {first['input_length']} / targets {first['target_length']}"
  )
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# -- command -----------------------------------------------------------------------------------


def default_settings(platform: str) -> tuple:
  return CPU_DEFAULTS if platform == "cpu" else RECIPE


def default_settings_for_device(steps: int = 5, decode_repeats: int = 2) -> Settings:
  """The default Settings on this process's first device (recipe on accelerators, small on CPU)."""
  import jax

  return Settings(
    *default_settings(jax.devices()[0].platform), steps=steps, decode_repeats=decode_repeats
  )


def main(argv=None) -> int:
  args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
  _check_names_and_plot(args)
  s = _checked(_settings(args))
  if args.jsonl:
    for name in args.names:
      print(json.dumps(measure(name, s)), flush=True)
    return 0
  rows = []
  for name in args.names:
    print(f"measuring {name} ...", file=sys.stderr, flush=True)
    rows.append(measure(name, s) if len(args.names) == 1 else measure_in_child(name, s))
  _report(rows, s, args)
  return 0


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m t5x_lite.efficiency",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("names", nargs="+", help="model names, e.g. t5-efficient-tiny-sh")
  parser.add_argument("--input_length", type=int, default=None)
  parser.add_argument("--target_length", type=int, default=None)
  parser.add_argument("--batch_size", type=int, default=None)
  parser.add_argument("--decode_length", type=int, default=None, help="decoded tokens per example")
  parser.add_argument("--dtype", default=None, choices=config.DTYPES, help="activation dtype")
  parser.add_argument("--steps", type=int, default=5, help="timed training steps (after compiling)")
  parser.add_argument("--decode_repeats", type=int, default=2, help="timed decoding calls")
  parser.add_argument("--csv", default=None, help="also write every field to this CSV file")
  parser.add_argument("--markdown", action="store_true", help="print a markdown table")
  parser.add_argument("--plot", default=None, help="also draw the Pareto views to this PNG file")
  parser.add_argument(
    "--jsonl",
    action="store_true",
    help="measure in this process and print one JSON object per name",
  )
  return parser


def _check_names_and_plot(args: argparse.Namespace) -> None:
  """Bad names and an unusable --plot fail before anything is measured."""
  for name in args.names:
    config.resolve_model_name(name)
  if args.plot and not args.plot.lower().endswith(".png"):
    raise UserError(f"--plot must name a .png file, got {args.plot!r}")
  if args.plot:
    try:
      import matplotlib  # noqa: F401
    except ImportError:
      raise UserError("--plot needs matplotlib: pip install -e '.[plot]'") from None


def _settings(args: argparse.Namespace) -> Settings:
  """The flags given, and this device's defaults for those not given."""
  import jax

  defaults = default_settings(jax.devices()[0].platform)
  given = (args.input_length, args.target_length, args.batch_size, args.decode_length, args.dtype)
  return Settings(
    *(d if g is None else g for g, d in zip(given, defaults)),
    steps=args.steps,
    decode_repeats=args.decode_repeats,
  )


def _checked(s: Settings) -> Settings:
  for field in (
    "input_length",
    "target_length",
    "batch_size",
    "decode_length",
    "steps",
    "decode_repeats",
  ):
    if getattr(s, field) <= 0:
      raise UserError(f"--{field} must be positive, got {getattr(s, field)}")
  if s.target_length < 2:
    raise UserError("--target_length must be at least 2")
  return s


def _report(rows: list[dict], s: Settings, args: argparse.Namespace) -> None:
  """Prints the table, and writes the CSV and the plot when asked to."""
  first = rows[0]
  print(
    f"# {first['device']}, {s.dtype}, batch {s.batch_size}, inputs {s.input_length} / "
    f"targets {s.target_length}, {s.steps} timed steps, decoding {s.decode_length} tokens"
  )
  print(markdown_table(rows) if args.markdown else plain_table(rows))
  if args.csv:
    write_csv(rows, args.csv)
    print(f"wrote {os.path.abspath(args.csv)}")
  if args.plot:
    plot(rows, args.plot)
    print(f"wrote {os.path.abspath(args.plot)}")


if __name__ == "__main__":
  run_main(main)
