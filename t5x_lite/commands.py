"""Commands that the CLIs print for the user to paste: they name an interpreter that has
t5x_lite installed, so they work in a fresh shell whether or not a virtualenv is active.
"""

from collections.abc import Sequence
import os
import re
import shlex
import shutil
import sys


def python() -> str:
  """How to name this interpreter in a printed command.

  `python` when that is what the shell would run anyway (an active virtualenv), else its absolute
  path: a command pasted into a shell in another directory finds it too (`.venv/bin/python`
  works only from the checkout).
  """
  here = os.path.abspath(sys.executable)
  on_path = shutil.which("python")
  if on_path and os.path.abspath(on_path) == here:
    return "python"
  return here


def without_bindings(flags: Sequence[str], names: Sequence[str]) -> list[str]:
  """`flags` less the `--gin.NAME=...` / `--gin_bindings=NAME = ...` that bind one of `names`
  (so that a printed command that binds them anew binds each once)."""

  def binds(flag: str) -> bool:
    m = re.match(r"^--(?:gin\.|gin_bindings?=)\s*([\w./]+)\s*=", flag)
    return bool(m) and m.group(1) in names

  return [f for f in flags if not binds(f)]


def absolute_gin_files(flags: Sequence[str]) -> list[str]:
  """`flags` with each `--gin_file=` that names a file in the working directory made absolute:
  the command then runs from any directory (the repo's gin/ is searched from anywhere)."""
  out = []
  for flag in flags:
    name = flag.partition("=")[2] if flag.startswith("--gin_file=") else ""
    if name and not os.path.isabs(name) and "://" not in name and os.path.isfile(name):
      flag = f"--gin_file={os.path.abspath(name)}"
    out.append(flag)
  return out


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
