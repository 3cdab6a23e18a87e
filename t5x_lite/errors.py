"""User-facing errors: one line, no traceback, non-zero exit."""

import sys
from typing import Callable, NoReturn


class UserError(Exception):
  """A mistake in flags, gin bindings, data or checkpoints that the user can fix.

  The message must be one line that says what is wrong and what to do.
  """


def fail(message: str, exit_code: int = 2) -> NoReturn:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(exit_code)


def run_main(main: Callable[[], int | None]) -> NoReturn:
  """Runs a CLI main; a UserError becomes `error: <message>` on stderr and exit code 2."""
  try:
    code = main()
  except UserError as e:
    fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  except KeyboardInterrupt:
    fail("interrupted", exit_code=130)
  sys.exit(code or 0)
