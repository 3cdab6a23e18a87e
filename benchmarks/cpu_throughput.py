"""Training throughput on CPU: our Trainer vs transformers + PyTorch, side by side.

  python benchmarks/cpu_throughput.py [--model=t5-efficient-tiny] [--batch=8] [--rounds=5]
  python benchmarks/cpu_throughput.py --train_command   # also the train command's own step

Same T5 config (transformers' T5ForConditionalGeneration built from our `hf_config_dict`), same
synthetic batch (inputs 512 / targets 114, no padding), float32, dropout 0, same thread count.
The peer trains with transformers' Adafactor (scale_parameter, lr 1e-2, clip 1.0, no relative
step) and its plain cross-entropy; ours is the full recipe step (per-layer Adafactor, z-loss,
metrics). Rounds interleave: matmul peak, N of our steps, N of theirs; medians over rounds.
MFU = training matmul FLOPs (config.train_flops_per_example) / step time / measured float32
matmul peak (flops.measure_cpu_matmul_flops) of the same round.

--train_command also runs `training.train` in this process at the same shapes (the quickstart
task, real data pipeline, checkpoints and evaluation out of the way) with log_period 1 and 5,
and reports the median logged step time after the compiled step next to the bare step's: what
the loop costs outside `Trainer.train_step` (data, transfers, dispatch, metrics, logging).
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_batch(batch: int, input_length: int, target_length: int, vocab: int, seed: int = 0):
  rng = np.random.RandomState(seed)
  inputs = rng.randint(3, vocab, size=(batch, input_length)).astype(np.int32)
  targets = rng.randint(3, vocab, size=(batch, target_length)).astype(np.int32)
  decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
  return {
    "encoder_input_tokens": inputs,
    "decoder_input_tokens": decoder_inputs,
    "decoder_target_tokens": targets,
    "decoder_loss_weights": np.ones_like(targets, dtype=np.float32),
  }


class Ours:
  def __init__(self, cfg, batch, lengths):
    import jax

    from t5x_lite import partitioning
    from t5x_lite.models import EncoderDecoderModel
    from t5x_lite.trainer import Trainer

    self.jax = jax
    mesh = partitioning.make_mesh(1, devices=jax.devices()[:1])
    self.trainer = Trainer(EncoderDecoderModel(cfg), mesh, partitioning.DEFAULT_RULES, lengths)
    self.state = self.trainer.init_state(0)
    self.batch = batch
    start = time.perf_counter()
    self.step()
    self.compile_s = time.perf_counter() - start

  def step(self):
    self.state, metrics = self.trainer.train_step(self.state, self.batch)
    return float(self.jax.device_get(metrics["loss"]))  # waits for the step


class Theirs:
  def __init__(self, cfg, batch, threads):
    import torch
    import transformers

    from t5x_lite.config import hf_config_dict

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    self.torch = torch
    self.model = transformers.T5ForConditionalGeneration(
      transformers.T5Config(**hf_config_dict(cfg))
    )
    self.model.train()
    self.optimizer = transformers.optimization.Adafactor(
      self.model.parameters(),
      lr=1e-2,
      scale_parameter=True,
      relative_step=False,
      warmup_init=False,
      clip_threshold=1.0,
    )
    self.batch = {
      "input_ids": torch.from_numpy(batch["encoder_input_tokens"]).long(),
      "decoder_input_ids": torch.from_numpy(batch["decoder_input_tokens"]).long(),
      "labels": torch.from_numpy(batch["decoder_target_tokens"]).long(),
    }
    self.step()

  def step(self):
    loss = self.model(**self.batch).loss
    loss.backward()
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    return loss.item()


def train_command_step(model: str, batch: int, lengths: dict, steps: int, log_period: int):
  """Median logged step time (s) of `training.train` at these shapes, after the compiled step."""
  import tempfile

  from t5x_lite import gin_utils, training
  import t5x_lite.tasks  # noqa: F401  (registers the quickstart task)

  with tempfile.TemporaryDirectory() as model_dir, gin_utils.fresh_config():
    gin_utils.parse_gin(
      ["runs/quickstart.gin"],
      [
        f"model_config.name = '{model}'",
        f"MODEL_DIR = '{model_dir}'",
        f"BATCH_SIZE = {batch}",
        f"TASK_FEATURE_LENGTHS = {dict(lengths)}",
        f"TRAIN_STEPS = {steps}",
        "CHECKPOINT_PERIOD = 1000000",
        "EVAL_PERIOD = 1000000",
        "train.eval_steps = 0",
        f"train.log_period = {log_period}",
        "train.memory_fit = 'off'",
      ],
    )
    training.train()
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f]
  times = [r["step_time_s"] for r in rows if r.get("step_time_s")]
  return statistics.median(times), len(times)


def timed(fn, n: int) -> float:
  start = time.perf_counter()
  for _ in range(n):
    fn()
  return (time.perf_counter() - start) / n


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="t5-efficient-tiny")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=114)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=3, help="steps per side per round")
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--scan_layers", type=int, default=1)
  parser.add_argument(
    "--also_unrolled",
    action="store_true",
    help="also time ours with the scan fully unrolled (model_config.scan_unroll "
    "= depth: same parameters, a run-level option)",
  )
  parser.add_argument("--no_peer", action="store_true", help="time only our trainer")
  parser.add_argument(
    "--train_command",
    action="store_true",
    help="also time the train command's loop at the same shapes (log_period 1 and 5)",
  )
  parser.add_argument("--train_command_steps", type=int, default=21)
  args = parser.parse_args()

  import dataclasses

  from t5x_lite import config, flops

  cfg = dataclasses.replace(
    config.resolve_model_name(args.model),
    dtype="float32",
    dropout_rate=0.0,
    scan_layers=bool(args.scan_layers),
  )
  lengths = {"inputs": args.inputs, "targets": args.targets}
  batch = make_batch(args.batch, args.inputs, args.targets, cfg.vocab_size)
  tokens_per_step = args.batch * (args.inputs + args.targets)
  flops_per_step = config.train_flops_per_example(cfg, args.inputs, args.targets) * args.batch

  ours = Ours(cfg, batch, lengths)
  depth = max(cfg.num_encoder_layers, cfg.num_decoder_layers)
  unrolled = (
    Ours(dataclasses.replace(cfg, scan_unroll=depth), batch, lengths)
    if args.also_unrolled
    else None
  )
  theirs = None if args.no_peer else Theirs(cfg, batch, args.threads)
  rounds = []
  for r in range(args.rounds):
    flops._measured_cpu_peak = None  # re-measure each round: the host's load drifts
    peak = flops.measure_cpu_matmul_flops()
    row = {"round": r, "peak_gflops": peak / 1e9, "ours_s": timed(ours.step, args.steps)}
    if unrolled is not None:
      row["unrolled_s"] = timed(unrolled.step, args.steps)
    if theirs is not None:
      row["theirs_s"] = timed(theirs.step, args.steps)
    row["mfu"] = flops_per_step / row["ours_s"] / peak
    rounds.append(row)
    print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)

  med = lambda key: statistics.median(r[key] for r in rounds)
  result = {
    "model": args.model,
    "batch": args.batch,
    "lengths": lengths,
    "scan_layers": cfg.scan_layers,
    "threads": args.threads,
    "compile_s": round(ours.compile_s, 1),
    "ours_step_s": round(med("ours_s"), 4),
    "ours_tokens_per_s": round(tokens_per_step / med("ours_s")),
    "peak_gflops": round(med("peak_gflops"), 1),
    "mfu": round(med("mfu"), 3),
    "load_avg": round(os.getloadavg()[0], 2),
  }
  if theirs is not None:
    result.update(
      theirs_step_s=round(med("theirs_s"), 4),
      theirs_tokens_per_s=round(tokens_per_step / med("theirs_s")),
      speedup=round(statistics.median(r["theirs_s"] / r["ours_s"] for r in rounds), 2),
    )
  if unrolled is not None:
    result.update(
      unrolled_step_s=round(med("unrolled_s"), 4),
      unrolled_tokens_per_s=round(tokens_per_step / med("unrolled_s")),
      unrolled_mfu=round(
        statistics.median(
          flops_per_step / r["unrolled_s"] / (r["peak_gflops"] * 1e9) for r in rounds
        ),
        3,
      ),
    )
  if args.train_command:
    for log_period in (1, 5):
      step_s, windows = train_command_step(
        args.model, args.batch, lengths, args.train_command_steps, log_period
      )
      result[f"train_command_step_s_log_period_{log_period}"] = round(step_s, 4)
      result[f"train_command_vs_bare_log_period_{log_period}"] = round(
        step_s / result["ours_step_s"], 3
      )
      result[f"train_command_windows_log_period_{log_period}"] = windows
    # The bare step again, after: the host's load drifts over the run.
    result["ours_step_s_after"] = round(timed(ours.step, args.steps), 4)
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
