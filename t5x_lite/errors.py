"""User-facing errors: one line, no traceback, non-zero exit."""

from collections.abc import Callable
import sys
from typing import NoReturn


class UserError(Exception):
  """A mistake in flags, gin bindings, data or checkpoints that the user can fix.

  The message must be one line that says what is wrong and what to do.
  """


def first_line(error: BaseException, limit: int | None = 300) -> str:
  """The first line of an exception's message (cut to `limit` characters), else its type name:
  library errors often carry long multi-line texts that must not reach a one-line message."""
  text = str(error).strip()
  return text.splitlines()[0][:limit] if text else type(error).__name__


def fail(message: str, exit_code: int = 2) -> NoReturn:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(exit_code)


def run_main(main: Callable[[], int | None]) -> NoReturn:
  """Runs a CLI main; a UserError becomes `error: <message>` on stderr and exit code 2."""
  try:
    code = main()
  except UserError as e:
    fail(first_line(e, limit=None))
  except KeyboardInterrupt:
    fail("interrupted", exit_code=130)
  sys.exit(code or 0)
