"""The one rule for reading the newest checkpoint step: try steps newest first; a step that cannot
be read is handed to the caller's policy (training moves it aside, export and inference only warn,
both refuse to fall back past the oldest), and any other error stops at once.
"""

from collections.abc import Callable, Iterator
import contextlib
from typing import TypeVar

from t5x_lite.errors import UserError

T = TypeVar("T")


class Unreadable(Exception):
  """A step's files failed to read (corrupt, truncated, missing); the cause is `__cause__`."""


@contextlib.contextmanager
def reading() -> Iterator[None]:
  """Marks the reads of a step: their failures (other than a UserError) make it Unreadable."""
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001  (orbax, tensorstore and gcs raise many kinds)
    raise Unreadable() from e


def newest_readable(
  steps: list[int], attempt: Callable[[int], T], on_unreadable: Callable[[int, BaseException], None]
) -> T | None:
  """`attempt(step)` for the steps (ascending) from the newest down, until one returns.

  A step whose reads fail (see `reading`) goes to `on_unreadable(step, error)`, which raises to stop
  or returns to try the previous step. None when there is no step.
  """
  for step in reversed(steps):
    try:
      return attempt(step)
    except Unreadable as e:
      on_unreadable(step, e.__cause__)
  return None
