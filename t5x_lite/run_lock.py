"""MODEL_DIR/RUN_LOCK: one training run per model directory.

Two runs on one directory would write the same checkpoint steps and every metrics row twice. The
lock is a small JSON file (host, pid, start time) that process 0 creates before anything in the
directory is touched and removes when the run ends, error exits included.

A lock left by a killed run is stale when it names this host and a pid that no longer runs; it is
then replaced (said in one line). A lock from another host, or any lock on an object store (gs://,
where no host can see another's processes and creation is not atomic), is never guessed stale:
the error says how to remove it once the user knows that run is gone.
"""

import datetime
import json
import os
import socket

from t5x_lite import files, paths
from t5x_lite.errors import UserError, first_line

LOCK_NAME = "RUN_LOCK"


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


class RunLock:
  def __init__(self, model_dir: str):
    self.path = os.path.join(model_dir, LOCK_NAME)
    self._remote = paths.is_remote(model_dir)
    self._content = json.dumps(
      {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      }
    )
    self._held = False

  def acquire(self) -> str | None:
    """Takes the lock; returns a line to print when a stale lock was replaced."""
    replaced = None
    if not self._create():
      holder = self._read()
      if self._is_stale(holder):
        replaced = (
          f"removed a stale lock {self.path} (pid {holder.get('pid')} on this host is not running)"
        )
        files.remove(self.path)
        if not self._create():
          holder = self._read()
          raise UserError(self._busy_message(holder))
      else:
        raise UserError(self._busy_message(holder))
    self._held = True
    return replaced

  def release(self, quiet: bool = False) -> None:
    """Removes the lock if it is still ours (a user may have removed and re-taken it).

    A lock that cannot be removed (the storage fails) is left in place with one warning line
    (none when `quiet`: the run is ending on an error of its own); the next start on this host
    replaces it, its pid being gone.
    """
    if not self._held:
      return
    self._held = False
    try:
      if files.read_text(self.path) != self._content:
        return
      files.remove(self.path)
    except FileNotFoundError:
      pass
    except Exception as e:  # noqa: BLE001  (epath's backends raise their own kinds)
      if not quiet:
        print(f"warning: could not remove the run lock {self.path}: {first_line(e)}", flush=True)

  def _create(self) -> bool:
    if self._remote:
      # No exclusive create on object stores: check, write, read back (a narrow race remains).
      if files.exists(self.path):
        return False
      files.write_text(self.path, self._content)
      return files.read_text(self.path) == self._content
    try:
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(self._content)
    return True

  def _read(self) -> dict:
    try:
      holder = json.loads(files.read_text(self.path))
      return holder if isinstance(holder, dict) else {}
    except Exception:  # noqa: BLE001  (epath's backends raise their own kinds; json a ValueError)
      return {}  # unreadable or half-written: treat as held by an unknown run

  def _is_stale(self, holder: dict) -> bool:
    if self._remote or holder.get("host") != socket.gethostname():
      return False
    pid = holder.get("pid")
    return isinstance(pid, int) and not _pid_alive(pid)

  def _busy_message(self, holder: dict) -> str:
    who = (
      f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
      f"{holder.get('started', '?')}"
    )
    if not self._remote and holder.get("host") == socket.gethostname():
      return (
        f"another training run ({who}) is using {os.path.dirname(self.path)}; stop it first "
        f"or use another MODEL_DIR"
      )
    remove = f"gsutil rm {self.path}" if self.path.startswith("gs://") else f"rm {self.path}"
    return (
      f"{os.path.dirname(self.path)} is locked by another training run ({who}); if that run "
      f"has ended, remove the lock with `{remove}` and start again, else use another "
      f"MODEL_DIR"
    )
