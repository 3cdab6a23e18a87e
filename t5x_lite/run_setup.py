"""Checks and settings made before a training run touches MODEL_DIR or compiles anything.

Each turns a mistake that would otherwise surface as a library traceback (often minutes later)
into a one-line UserError, and keeps library logging off the console.
"""

import logging
import os
import sys
import tempfile

import gin
import jax

from t5x_lite import files, gin_utils, paths, quiet_startup, run_lock, tokens
from t5x_lite.config import T5Config
from t5x_lite.data import batches
from t5x_lite.errors import UserError, first_line

# Directories a run writes in MODEL_DIR: a file by one of these names would fail the first save.
_RUN_DIRS = ("checkpoints", "data_state", "logs", "tensorboard", "predictions")


def parse_run_config(gin_files: list[str], gin_bindings: list[str], reads_data: bool = True):
  """Parses a run's gin files and bindings. The seqio tasks, their pipelines and TensorFlow are
  imported only when the run's data is read by a task's pipeline (not for synthetic or ready-made
  data), or when the bindings name a configurable only they register (a task of your own)."""
  try:
    gin_utils.parse_gin(gin_files, gin_bindings, finalize=False, with_tasks=False)
    task = gin_utils.bound_value("train.mixture_or_task_name", None)
    if not reads_data or (isinstance(task, str) and not batches.needs_tasks(task)):
      gin.finalize()
      return
  except UserError:
    pass  # parsed again with the tasks below, which report a real mistake in their own words
  gin.clear_config()
  # The seqio tasks (every module of tasks/), imported inside the command's run_main: a task
  # module that fails to import is then a one-line error. (The data layer keeps TensorFlow off
  # GPUs when it is imported; TF's CUDA probing then prints what no one needs to read.)
  with quiet_startup.banners_hidden():
    try:
      batches.load_tasks()
    except ImportError as e:
      raise UserError(
        f"this run's data is read by a seqio task, which needs TensorFlow and seqio ("
        f"{e.name or 'one of them'} is not installed here): install them, or train on examples "
        f"written where they are "
        f"(python -m t5x_lite.write_examples, then --gin.ready_made.directory=...)"
      ) from None
  gin_utils.parse_gin(gin_files, gin_bindings)


def prepare_model_dir(model_dir: str) -> "ModelDirBefore":
  """Creates MODEL_DIR; a path that is a file or cannot be created is a one-line error.

  Returns what MODEL_DIR held before, to undo the run's start with if it fails before training.
  """
  before = ModelDirBefore(model_dir)
  paths.make_dirs(model_dir, "MODEL_DIR")
  for name in _RUN_DIRS:
    path = os.path.join(model_dir, name)
    if files.isfile(path):
      before.undo()
      raise UserError(
        f"{path} is a file where the run keeps its {name} directory; move it away or choose "
        f"another MODEL_DIR"
      )
  return before


class ModelDirBefore:
  """What MODEL_DIR held before a run started: a run that fails before its first train step (a
  bad setting, a refused resume, no data) takes back what its start added, so MODEL_DIR is left
  as it was, or is not there at all.

  A start may add MODEL_DIR itself, `checkpoints/` (Orbax creates it), `metrics.jsonl`,
  `tensorboard/`, `predictions/` (the step-0 evaluation) and a fine-tuning run's `spiece.model`;
  it changes no file that was there (library logs wait in memory until training starts, dropped
  metrics rows are written with the next row, the lock is released).
  """

  def __init__(self, model_dir: str):
    self.model_dir = model_dir
    # The names in MODEL_DIR, or None when it is not there; then the outermost missing parent.
    self._names = set(files.listdir(model_dir)) if files.isdir(model_dir) else None
    self._top_created = model_dir
    if self._names is None and not paths.is_remote(model_dir):
      while not os.path.exists(os.path.dirname(self._top_created)):
        self._top_created = os.path.dirname(self._top_created)

  def undo(self) -> None:
    if jax.process_index() != 0:  # process 0 holds the lock and speaks for the run
      return
    if self._names is not None:
      for name in set(files.listdir(self.model_dir)) - self._names - {run_lock.LOCK_NAME}:
        _remove(os.path.join(self.model_dir, name))
      return
    files.rmtree(self.model_dir)
    # Parents created for it go too, unless something else has been put there since.
    parent, stop = os.path.dirname(self.model_dir), os.path.dirname(self._top_created)
    while parent != stop:
      try:
        os.rmdir(parent)
      except OSError:
        return
      parent = os.path.dirname(parent)


def _remove(path: str) -> None:
  if files.isdir(path):
    files.rmtree(path)
  else:
    files.remove(path)


def check_model_splits(cfg: T5Config, num_partitions: int) -> None:
  """The `model` mesh axis splits heads, MLP units and the vocabulary: each must divide evenly."""
  if num_partitions == 1:
    return
  for name, size in (
    ("num_heads", cfg.num_heads),
    ("d_ff", cfg.d_ff),
    ("vocab_size", cfg.vocab_size),
  ):
    if size % num_partitions:
      raise UserError(
        f"NUM_PARTITIONS={num_partitions} does not divide the model's {name}={size} "
        f"(the model axis splits it); choose a NUM_PARTITIONS that divides it"
      )


def task_vocab_size(mixture_or_task_name: str) -> int:
  """The task's vocabulary size; a vocabulary file that cannot be read is a one-line error."""
  from t5x_lite.data import pipeline  # seqio: the task's own vocabulary

  task_vocab = pipeline.get_vocabulary(mixture_or_task_name)
  path = getattr(task_vocab, "sentencepiece_model_file", None)
  try:
    return task_vocab.vocab_size
  except Exception as e:  # noqa: BLE001  (tf, sentencepiece and gcs raise many kinds)
    empty = (
      path and not paths.is_remote(path) and os.path.isfile(path) and not os.path.getsize(path)
    )
    reason = "the file is empty" if empty else first_line(e, limit=200)
    raise UserError(_vocab_unreadable(mixture_or_task_name, path, reason)) from None


def check_splits(mixture_or_task_name: str, provider, splits: list[str]) -> None:
  for split in splits:
    if split not in provider.splits:
      raise UserError(
        f"task {mixture_or_task_name!r} has no split {split!r}; its splits: "
        f"{', '.join(provider.splits)}"
      )


def check_task_fits_model(mixture_or_task_name: str, model_vocab_size: int) -> None:
  num_ids = batches.vocab_size(mixture_or_task_name, model_vocab_size)  # synthetic, ready-made
  tokens.check_vocab_fits(
    num_ids if num_ids is not None else task_vocab_size(mixture_or_task_name),
    model_vocab_size,
    f"the vocabulary of task {mixture_or_task_name!r}",
  )


def _vocab_unreadable(task: str, path: str | None, reason: str) -> str:
  offline = " (offline?)" if path and paths.is_remote(path) else ""
  return (
    f"the vocabulary of task {task!r} ({path}) cannot be read{offline}: {reason}; bind a "
    f"local SentencePiece model with --gin.task_vocabulary.path=\"'/path/vocab.model'\" "
    f"(python -m t5x_lite.train_vocab trains one)"
  )


class _HeldRecords(logging.Handler):
  def __init__(self):
    super().__init__()
    self.records: list[logging.LogRecord] = []

  def emit(self, record: logging.LogRecord) -> None:
    self.records.append(record)


def hold_library_logs() -> None:
  """Takes library logging off the console (see send_library_logs_to) and keeps it in memory
  until training starts: a run that fails before then writes no log file into MODEL_DIR."""
  _route_library_logs(_HeldRecords())


def send_library_logs_to(model_dir: str) -> str:
  """Routes Python logging (absl, Orbax, asyncio), warnings and unraisable-exception reports to
  MODEL_DIR/logs/python_<process>.log (a local temp dir for object stores), after what
  hold_library_logs kept; returns its path.

  Our own messages are printed, so the console shows them alone.
  """
  if paths.is_remote(model_dir):
    log_dir = tempfile.mkdtemp(prefix="t5x_lite_logs_")
  else:
    log_dir = os.path.join(model_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
  path = os.path.join(log_dir, f"python_{jax.process_index()}.log")
  handler = _LogFile(path, encoding="utf-8")
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  held = [h for h in logging.getLogger().handlers if isinstance(h, _HeldRecords)]
  _route_library_logs(handler)
  for record in held[0].records if held else []:
    handler.handle(record)
  return path


class _LogFile(logging.FileHandler):
  """The library log file, best effort: a record that cannot be written (the disk is full) is
  dropped, not reported on the console with a traceback; the run's own writes report the fault."""

  def handleError(self, record: logging.LogRecord) -> None:
    pass


def _route_library_logs(handler: logging.Handler) -> None:
  root = logging.getLogger()
  for old in list(root.handlers):
    # absl's stderr handler and earlier handlers of ours go; test harness handlers stay.
    if (
      getattr(old, "_t5x_lite_log", False)
      or type(old).__name__ == "ABSLHandler"
      or (type(old) is logging.StreamHandler and old.stream in (sys.stderr, sys.stdout))
    ):
      root.removeHandler(old)
      old.close()
  handler._t5x_lite_log = True  # pylint: disable=protected-access
  root.addHandler(handler)
  root.setLevel(logging.INFO)
  logging.captureWarnings(True)
  # Orbax's failed async reads leave callbacks that report into sys.unraisablehook (stderr).
  log = logging.getLogger("t5x_lite.unraisable")
  sys.unraisablehook = lambda u: log.warning("unraisable %s: %s", u.exc_type.__name__, u.exc_value)
