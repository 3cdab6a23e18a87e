"""Training metrics to the console, MODEL_DIR/metrics.jsonl and TensorBoard (process 0 only)."""

import json
import math
import os
import sys
import time

import jax


def _fmt_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class MetricsWriter:

  def __init__(self, model_dir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tb = None
    if self.enabled:
      os.makedirs(model_dir, exist_ok=True)
      self._jsonl = open(os.path.join(model_dir, "metrics.jsonl"), "a", encoding="utf-8")
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(model_dir, "tensorboard"))
      except ImportError:  # TensorBoard is optional; the JSONL file has everything.
        self._tb = None

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    record = {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (int, bool)) else v)
              for k, v in record.items()}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      step = int(record["step"])
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and value is not None:
          self._tb.add_scalar(key, value, step)
      self._tb.flush()

  def console(self, line: str) -> None:
    if self.enabled:
      print(line, file=sys.stdout, flush=True)

  def train_line(self, r: dict, total_steps: int, started: float, first_step: int) -> None:
    done = r["step"] - first_step
    rate = done / max(time.time() - started, 1e-9)
    eta = (total_steps - r["step"]) / rate if rate > 0 else float("inf")
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    self.console(
        f"step {r['step']:>7d}/{total_steps} | loss {r['loss']:.4f} | acc {r['accuracy']:.4f} | "
        f"lr {r['learning_rate']:.3e} | gnorm {r['grad_norm']:.3f} | "
        f"{r['tokens_per_second']:,.0f} tok/s | {r['step_time_s'] * 1000:.0f} ms/step | MFU {mfu} | "
        f"ETA {_fmt_duration(eta)}")

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
