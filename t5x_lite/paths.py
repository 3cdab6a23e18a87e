"""Paths that are local files or object-store URLs (gs://, file://): the one test for which, and
directories created with a one-line error when they cannot be. Files are read and written through
t5x_lite/files.py."""

import contextlib
import os

from t5x_lite.errors import UserError, first_line


def is_remote(path: str) -> bool:
  """A URL (gs://, file://, ...), read and written through etils.epath and used as given."""
  return "://" in path


def resolve(path: str) -> str:
  """An absolute local path, or a URL as given."""
  return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def orbax_path(path: str) -> str:
  """Orbax takes gs:// URLs but not file:// ones: those become plain paths."""
  return path[len("file://") :] if path.startswith("file://") else path


def check_creatable(path: str, what: str) -> None:
  """Refuses, before any work, a local directory that could not be made or written: a file in
  the way, or a directory this user may not write to. `what` names it in the message
  ('MODEL_DIR'). Other reasons (a read-only file system, a name too long) surface in make_dirs."""
  if is_remote(path):
    return
  path = os.path.abspath(path)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    where = "is a file" if existing == path else f"cannot be created: {existing} is a file"
    raise UserError(f"{what} {path} {where}, not a directory; choose another {what}")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(
      f"{what} {path} is not writable ({existing} does not allow writing for this user); "
      f"choose another {what} or fix its permissions"
    )


def make_dirs(path: str, what: str) -> None:
  """Creates a directory and its parents (local or an object store); one that cannot be created
  is a one-line UserError naming `what` and the system's reason."""
  check_creatable(path, what)
  if is_remote(path):
    from etils import epath

    try:
      epath.Path(orbax_path(path)).mkdir(parents=True, exist_ok=True)
    except Exception as e:  # noqa: BLE001  (epath's backends raise their own kinds)
      raise UserError(f"{what} {path} cannot be created: {first_line(e)}") from None
    return
  missing = []  # the parents this call creates, outermost last
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    missing.append(parent)
    parent = os.path.dirname(parent)
  try:
    os.makedirs(path, exist_ok=True)
  except (OSError, ValueError) as e:  # ValueError: a NUL character in the name
    for created in missing:  # a failure leaves no trace
      with contextlib.suppress(OSError):
        os.rmdir(created)
    reason = getattr(e, "strerror", None) or first_line(e)
    raise UserError(f"{what} {path} cannot be created: {reason}; choose another {what}") from None
