"""The one rule for reading the newest checkpoint step: try steps newest first; a step that cannot
be read is handed to the caller's policy (training moves it aside, export and inference only warn,
both refuse to fall back past the oldest), and any other error stops at once.
"""

from collections.abc import Callable, Iterator
import contextlib
import json
import re
from typing import TypeVar

from t5x_lite.errors import UserError, first_line

T = TypeVar("T")


class Unreadable(Exception):
  """A step's files failed to read (corrupt, truncated, missing); the cause is `__cause__`."""


@contextlib.contextmanager
def reading(part: str) -> Iterator[None]:
  """Marks the reads of `part` of a step ('meta', 'state'): their failures (other than a
  UserError) make it Unreadable."""
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001  (orbax, tensorstore and gcs raise many kinds)
    raise Unreadable(part) from e


def reason(error: BaseException) -> str:
  """Why a step could not be read, in one readable line: the innermost error of the chain (Orbax
  wraps TensorStore's, which names the file and what is wrong with it) without the library's
  dump of its settings, after the part of the step being read."""
  part = error.args[0] if isinstance(error, Unreadable) and error.args else None
  while error.__cause__ is not None:
    error = error.__cause__
  text = first_line(error, limit=None)
  text = re.split(r" \[tensorstore_spec| See full TensorStore details", text)[0]
  text = re.sub(r"^[A-Z_]+: ", "", text)  # absl status codes such as OUT_OF_RANGE
  # The step's directory is named by the caller; the drivers TensorStore opened say nothing.
  text = re.sub(r' in OCDBT database at local file "[^"]*"|Error opening "\w+" driver: ', "", text)
  if isinstance(error, json.JSONDecodeError):
    text = f"invalid JSON ({text})"
  return f"{part}: {text}" if part else text


def newest_readable(
  steps: list[int], attempt: Callable[[int], T], on_unreadable: Callable[[int, BaseException], None]
) -> T | None:
  """`attempt(step)` for the steps (ascending) from the newest down, until one returns.

  A step whose reads fail (see `reading`) goes to `on_unreadable(step, error)` (the Unreadable;
  `reason(error)` says why), which raises to stop or returns to try the previous step. None when
  there is no step.
  """
  for step in reversed(steps):
    try:
      return attempt(step)
    except Unreadable as e:
      on_unreadable(step, e)
  return None
