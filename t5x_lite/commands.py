"""Commands that the CLIs print for the user to paste: they name an interpreter that has
t5x_lite installed, so they work in a fresh shell whether or not a virtualenv is active.
"""

from collections.abc import Sequence
import os
import shlex
import shutil
import sys


def python() -> str:
  """How to name this interpreter in a printed command.

  `python` when that is what the shell would run anyway (an active virtualenv), else its path:
  relative when it lies under the working directory (`.venv/bin/python` from the checkout), else
  absolute.
  """
  here = os.path.abspath(sys.executable)
  on_path = shutil.which("python")
  if on_path and os.path.abspath(on_path) == here:
    return "python"
  relative = os.path.relpath(here)
  return relative if not relative.startswith("..") else here


def quote(arg: str) -> str:
  """`arg` for a POSIX shell, readably: gin string bindings become `"--gin.X='v'"`."""
  if shlex.quote(arg) == arg:
    return arg
  if not any(c in arg for c in '"$`\\!'):
    return f'"{arg}"'
  return shlex.quote(arg)


def module_command(module: str, args: Sequence[str] = ()) -> str:
  """`PYTHON -m MODULE ARGS...`, each argument quoted for a POSIX shell where it needs it."""
  return " ".join([quote(python()), "-m", module, *(quote(a) for a in args)])
