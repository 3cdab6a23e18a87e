"""Training metrics to the console, MODEL_DIR/metrics.jsonl and TensorBoard (process 0 only).

MODEL_DIR may be local or on an object store (gs://): files go through etils.epath
(t5x_lite/files.py), TensorBoard events through t5x_lite/tensorboard_events.py; no TensorFlow.
"""

import json
import math
import os
import sys
import time

import jax

from t5x_lite import files, paths, storage_faults
from t5x_lite.tensorboard_events import ScalarEventWriter


def _fmt_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class MetricsWriter:
  """Writes nothing before the first row: a run that fails before it leaves MODEL_DIR as it was."""

  def __init__(self, model_dir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._model_dir = model_dir
    self._path = os.path.join(model_dir, "metrics.jsonl")
    self._lines: list[str] = []
    self._rows_dropped = False  # in memory: the file is rewritten with the next row
    self._tb = None
    self._tb_dir = os.path.join(model_dir, "tensorboard")
    # Object stores (gs://) cannot append: keep the lines and rewrite the file each time.
    if self.enabled and files.exists(self._path):
      self._lines = files.read_text(self._path).splitlines()

  def drop_rows_after(self, step: int | None) -> None:
    """Drops rows past the step a run resumes from (None: a fresh start drops them all).

    Those steps are trained again, so after a crash and resume each step appears once.
    """
    if not self.enabled or not self._lines:
      return

    def kept(line: str) -> bool:
      try:
        return step is not None and int(json.loads(line)["step"]) <= step
      except (ValueError, KeyError, TypeError):
        return False  # a line cut short by a crash

    lines = [line for line in self._lines if kept(line)]
    if len(lines) != len(self._lines):
      self._lines = lines
      self._rows_dropped = True

  def _rewrite(self) -> None:
    text = "".join(line + "\n" for line in self._lines)
    if paths.is_remote(self._path):
      files.write_text(self._path, text)
      return
    tmp = self._path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, self._path)

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    record = {
      k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (int, bool)) else v)
      for k, v in record.items()
    }
    self._lines.append(json.dumps(record))
    with storage_faults.writing("metrics", self._path):
      self._write_lines()
    with storage_faults.writing("TensorBoard events", self._tb_dir):
      self._write_events(record)

  def _write_lines(self) -> None:
    if self._rows_dropped or paths.is_remote(self._path):
      self._rewrite()
      self._rows_dropped = False
    else:
      with open(self._path, "a", encoding="utf-8") as f:
        f.write(self._lines[-1] + "\n")

  def _write_events(self, record: dict) -> None:
    if self._tb is None:
      self._tb = ScalarEventWriter(self._tb_dir)
    self._tb.scalars(
      int(record["step"]),
      {
        key: value
        for key, value in record.items()
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
      },
    )

  def console(self, line: str) -> None:
    if self.enabled:
      print(line, file=sys.stdout, flush=True)

  def train_line(self, r: dict, total_steps: int, started: float, first_step: int) -> None:
    done = r["step"] - first_step
    rate = done / max(time.time() - started, 1e-9)
    left = total_steps - r["step"]
    eta = left / rate if rate > 0 else (0.0 if left <= 0 else float("inf"))
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    speed = (
      f"{r['tokens_per_second']:,.0f} tok/s | {r['step_time_s'] * 1000:.0f} ms/step"
      if r.get("step_time_s")
      else "compiled step, not timed"
    )
    self.console(
      f"step {r['step']:>7d}/{total_steps} | loss {r['loss']:.4f} | acc {r['accuracy']:.4f} | "
      f"lr {r['learning_rate']:.3e} | gnorm {r['grad_norm']:.3f} | "
      f"{speed} | MFU {mfu} | "
      f"ETA {_fmt_duration(eta)}"
    )

  def close(self) -> None:
    if self._tb is not None:
      with storage_faults.writing("TensorBoard events", self._tb_dir):
        self._tb.close()
