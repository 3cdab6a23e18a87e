"""User-facing errors: one line, no traceback, non-zero exit."""

from collections.abc import Callable
import os
import sys
import threading
from typing import NoReturn


class UserError(Exception):
  """A mistake in flags, gin bindings, data or checkpoints that the user can fix.

  The message must be one line that says what is wrong and what to do.
  """


# sysexits.h EX_TEMPFAIL, "try again later": the run stopped cleanly because MODEL_DIR could not
# be written, and the same command resumes once the storage is fixed. Launchers and schedulers can
# tell it from a crash (1), a user error (2) and an interrupt (130).
STORAGE_EXIT_CODE = 75

# How long the interpreter may take to exit after a storage error before the process is ended
# anyway: a storage library's background threads can wait minutes for a write that will never
# come, and Python joins such threads before it exits.
_EXIT_GRACE_S = 20.0


class StorageError(UserError):
  """A write to MODEL_DIR (a checkpoint, metrics, the data position, the config) failed during a
  run: the run stops with STORAGE_EXIT_CODE; what was saved before stays as it was."""


def first_line(error: BaseException, limit: int | None = 300) -> str:
  """The first line of an exception's message (cut to `limit` characters), else its type name:
  library errors often carry long multi-line texts that must not reach a one-line message."""
  text = str(error).strip()
  return text.splitlines()[0][:limit] if text else type(error).__name__


def fail(message: str, exit_code: int = 2) -> NoReturn:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(exit_code)


def run_main(main: Callable[[], int | None]) -> NoReturn:
  """Runs a CLI main; a UserError becomes `error: <message>` on stderr and exit code 2, a
  StorageError the same line and STORAGE_EXIT_CODE."""
  try:
    code = main()
  except StorageError as e:
    _end_within_grace(STORAGE_EXIT_CODE)
    fail(first_line(e, limit=None), exit_code=STORAGE_EXIT_CODE)
  except UserError as e:
    fail(first_line(e, limit=None))
  except KeyboardInterrupt:
    fail("interrupted", exit_code=130)
  sys.exit(code or 0)


def _end_within_grace(exit_code: int) -> None:
  """Ends the process with `exit_code` if a normal exit has not happened in _EXIT_GRACE_S."""

  def end() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)

  timer = threading.Timer(_EXIT_GRACE_S, end)
  timer.daemon = True
  timer.start()
