"""Writes to MODEL_DIR that fail during a run: named in one line, and acted on by every process.

A failed write (no space, no permission, an object-store error that persisted past the storage
library's own retries) becomes a StorageError naming what was written, where, and the OS error.
Orbax writes arrays through tensorstore, whose gs:// and s3:// drivers retry transient errors
themselves (`gcs_request_retries` / `s3_request_retries`: 32 retries, backoff 1 s to 32 s, kept
at their defaults); etils.epath's backends (TF's gfile or gcsfs) retry likewise. Nothing here retries.

Several processes: each notes its own failure (`held`) and all of them compare notes at the same
step (`agree`), so every process stops there together and none is left waiting for a peer in a
collective or an Orbax barrier.
"""

from collections.abc import Iterator
import contextlib
import errno
import os
import re
import sys

import jax
from jax.experimental import multihost_utils
import numpy as np

from t5x_lite.errors import StorageError, first_line

# Bytes of a failure message that travel between processes.
_MESSAGE_BYTES = 1024
# tensorstore reports the OS error inside its text: `... [os_error_code='28']`.
_TS_OS_ERROR = re.compile(r"os_error_code='?(\d+)")
# tensorstore raises ValueError with an absl status code in front of its text.
_TS_STATUS = re.compile(
  r"^(RESOURCE_EXHAUSTED|PERMISSION_DENIED|UNAVAILABLE|DEADLINE_EXCEEDED|ABORTED|NOT_FOUND|"
  r"ALREADY_EXISTS|FAILED_PRECONDITION|DATA_LOSS|UNAUTHENTICATED): "
)


def is_storage_error(error: BaseException) -> bool:
  """Whether `error` (or what caused it) is a failed file or object-store operation."""
  # tf.io.gfile's errors count where TensorFlow is in use; it is not imported for them.
  tf = sys.modules.get("tensorflow")
  kinds = (OSError, tf.errors.OpError) if tf is not None else (OSError,)
  seen = error
  while seen is not None:
    if isinstance(seen, kinds) or _TS_STATUS.match(str(seen)):
      return True
    seen = seen.__cause__ or seen.__context__
  return False


def reason(error: BaseException) -> str:
  """The OS error of a failed write, e.g. `No space left on device (ENOSPC)`, else its first line."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno:
      return _errno_text(seen.errno)
    match = _TS_OS_ERROR.search(str(seen))
    if match:
      return _errno_text(int(match.group(1)))
    named = _named_os_error(str(seen))  # TF's gfile names the error in its text alone
    if named:
      return named
    seen = seen.__cause__ or seen.__context__
  return first_line(error, limit=200)


def _named_os_error(text: str) -> str | None:
  for code in (errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT):
    if os.strerror(code) in text:
      return _errno_text(code)
  return None


def _errno_text(code: int) -> str:
  return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"


def failure(what: str, path: str, error: BaseException) -> StorageError:
  return StorageError(f"writing {what} to {path} failed: {reason(error)}")


@contextlib.contextmanager
def writing(what: str, path: str) -> Iterator[None]:
  """Turns the errors a failed write raises into a StorageError naming `what` and `path`."""
  try:
    yield
  except StorageError:
    raise
  except Exception as e:
    if not is_storage_error(e):
      raise
    raise failure(what, path, e) from e


class Faults:
  """The first storage failure this process has met since the processes last agreed."""

  def __init__(self):
    self.failed: StorageError | None = None

  @contextlib.contextmanager
  def held(self) -> Iterator[None]:
    """Notes a StorageError raised inside, to be raised by `agree` (the first one is kept).
    One process has no one to agree with: it raises at once."""
    try:
      yield
    except StorageError as e:
      if jax.process_count() == 1:
        raise
      self.failed = self.failed or e

  def agree(self) -> None:
    """Raises the failure of this process, or else the first one of any other process.

    With several processes every one must call this at the same step: it is a collective.
    """
    failed, self.failed = self.failed, None
    if jax.process_count() == 1:
      if failed is not None:
        raise failed
      return
    mine = str(failed).encode()[:_MESSAGE_BYTES] if failed is not None else b""
    row = np.zeros(_MESSAGE_BYTES + 1, np.uint8)
    row[0] = failed is not None
    row[1 : 1 + len(mine)] = np.frombuffer(mine, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(row))
    if failed is not None:
      raise failed
    for index, other in enumerate(rows):
      if other[0]:
        text = bytes(other[1:]).rstrip(b"\0").decode(errors="replace")
        raise StorageError(f"process {index}: {text}")
