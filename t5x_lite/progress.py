"""Progress lines with a rate and an ETA for long one-off jobs (tokenizing a corpus, training a
vocabulary, building the quickstart corpus): plain lines, at most one every few seconds, so they
read well in a terminal and in a log file alike.
"""

from collections.abc import Callable
import sys
import time


def format_duration(seconds: float) -> str:
  if seconds != seconds or seconds == float("inf"):
    return "?"
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_bytes(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB"):
    if n < 1000:
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1000
  return f"{n:.1f} TB"


def format_count(n: float) -> str:
  if float(n).is_integer() or n >= 10:
    return f"{n:,.0f}"
  return f"{n:.2f}"


def log_to_stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


class Progress:
  """`label: done/total unit (pct%), rate/s, ETA`: call `advance(n)` as work completes.

  A line is written when at least `every_s` seconds passed since the last one, and by `finish`.
  """

  def __init__(
    self,
    label: str,
    total: float,
    unit: str = "",
    every_s: float = 10.0,
    log: Callable[[str], None] = log_to_stderr,
    amount: Callable[[float], str] | None = None,
  ):
    self.label, self.total, self.unit, self.every_s, self.log = label, total, unit, every_s, log
    self.amount = amount or format_count
    self.done = 0.0
    self.started = self._last = time.monotonic()

  def line(self) -> str:
    elapsed = max(time.monotonic() - self.started, 1e-9)
    rate = self.done / elapsed
    unit = f" {self.unit}" if self.unit else ""
    text = f"{self.label}: {self.amount(self.done)}"
    if self.total:
      text += f"/{self.amount(self.total)}{unit} ({100 * self.done / self.total:.0f}%)"
      eta = (self.total - self.done) / rate if rate > 0 else float("inf")
      return f"{text}, {self.amount(rate)}{unit}/s, ETA {format_duration(eta)}"
    return f"{text}{unit}, {self.amount(rate)}{unit}/s, {format_duration(elapsed)} so far"

  def advance(self, n: float = 1, note: str = "") -> None:
    self.done += n
    now = time.monotonic()
    if now - self._last >= self.every_s:
      self._last = now
      self.log(self.line() + (f"; {note}" if note else ""))

  def finish(self, note: str = "") -> None:
    elapsed = time.monotonic() - self.started
    unit = f" {self.unit}" if self.unit else ""
    self.log(
      f"{self.label}: {self.amount(self.done)}{unit} in {format_duration(elapsed)}"
      + (f"; {note}" if note else "")
    )
