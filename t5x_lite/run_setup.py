"""Checks and settings made before a training run touches MODEL_DIR or compiles anything.

Each turns a mistake that would otherwise surface as a library traceback (often minutes later)
into a one-line UserError, and keeps library logging off the console.
"""

import logging
import os
import sys
import tempfile

import jax
import tensorflow as tf

from t5x_lite import paths, tokens
from t5x_lite.config import T5Config
from t5x_lite.data import pipeline
from t5x_lite.errors import UserError, first_line


def prepare_model_dir(model_dir: str) -> None:
  """Creates MODEL_DIR; a path that is a file or cannot be written is a one-line error."""
  if paths.is_remote(model_dir):
    try:
      tf.io.gfile.makedirs(model_dir)
    except tf.errors.OpError as e:
      raise UserError(f"cannot create MODEL_DIR {model_dir}: {first_line(e)}") from None
    return
  existing = model_dir
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    where = "is a file" if existing == model_dir else f"cannot be created: {existing} is a file"
    raise UserError(f"MODEL_DIR {model_dir} {where}, not a directory; choose another MODEL_DIR")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(
      f"MODEL_DIR {model_dir} is not writable ({existing} does not allow writing "
      f"for this user); choose another MODEL_DIR or fix its permissions"
    )
  os.makedirs(model_dir, exist_ok=True)


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
  task_vocab = pipeline.get_vocabulary(mixture_or_task_name)
  path = getattr(task_vocab, "sentencepiece_model_file", None)
  try:
    return task_vocab.vocab_size
  except Exception as e:  # noqa: BLE001  (tf, sentencepiece and gcs raise many kinds)
    raise UserError(
      _vocab_unreadable(mixture_or_task_name, path, first_line(e, limit=200))
    ) from None


def check_task_fits_model(mixture_or_task_name: str, model_vocab_size: int) -> None:
  tokens.check_vocab_fits(
    task_vocab_size(mixture_or_task_name),
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


def send_library_logs_to(model_dir: str) -> str:
  """Routes Python logging (absl, Orbax, asyncio), warnings and unraisable-exception reports to
  MODEL_DIR/logs/python_<process>.log (a local temp dir for object stores); returns its path.

  Our own messages are printed, so the console shows them alone.
  """
  if paths.is_remote(model_dir):
    log_dir = tempfile.mkdtemp(prefix="t5x_lite_logs_")
  else:
    log_dir = os.path.join(model_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
  path = os.path.join(log_dir, f"python_{jax.process_index()}.log")
  handler = logging.FileHandler(path, encoding="utf-8")
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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
  return path
