"""Gin flag handling shared by every entry point (T5X-style flags).

Flags: `--gin_file=PATH` (repeatable; searched in the cwd and the repo's `gin/`),
`--gin_bindings=BINDING` (repeatable) and the shorthand `--gin.NAME=VALUE`.
"""

import contextlib
import difflib
import logging
import os
import pathlib
import re
from typing import Sequence

import gin

from t5x_lite.errors import UserError

# The repo's gin/ directory (the package is installed in editable mode from the repo).
REPO_GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"


def gin_search_path() -> list[str]:
  extra = [p for p in os.environ.get("T5X_LITE_GIN_PATH", "").split(os.pathsep) if p]
  return [os.getcwd(), *extra, str(REPO_GIN_DIR)]


def _resolve_gin_file(name: str) -> str:
  for root in gin_search_path():
    candidate = pathlib.Path(root) / name
    if candidate.is_file():
      return str(candidate)
  if pathlib.Path(name).is_file():
    return name
  raise UserError(f"gin file {name!r} not found; searched {', '.join(gin_search_path())}")


def split_gin_flags(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
  """Separates gin flags from the rest: (gin_files, gin_bindings, other_args)."""
  files, bindings, rest = [], [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    m = re.match(r"^--(gin_file|gin_bindings|gin_binding)(=(.*))?$", arg)
    if m:
      value = m.group(3)
      if value is None:
        if i + 1 >= len(args):
          raise UserError(f"flag {arg} needs a value")
        i += 1
        value = args[i]
      (files if m.group(1) == "gin_file" else bindings).append(value)
    elif arg.startswith("--gin."):
      name, sep, value = arg[len("--gin."):].partition("=")
      if not sep:
        raise UserError(f"flag {arg} must look like --gin.NAME=VALUE")
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
    i += 1
  return files, bindings, rest


class _DropPathNotFound(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Path not found")


@contextlib.contextmanager
def _quiet_include_search():
  """gin logs an error for every search-path entry an `include` is not in; only a miss in all
  of them is an error, and that one raises."""
  noise = _DropPathNotFound()
  logging.getLogger().addFilter(noise)
  try:
    yield
  finally:
    logging.getLogger().removeFilter(noise)


def _one_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return text[0] if text else type(e).__name__


def parse_gin(files: Sequence[str], bindings: Sequence[str], finalize: bool = True) -> None:
  """Parses gin files and bindings; any mistake becomes a one-line UserError."""
  for root in gin_search_path():
    gin.add_config_file_search_path(root)
  resolved = [_resolve_gin_file(f) for f in files]
  try:
    with _quiet_include_search():
      gin.parse_config_files_and_bindings(resolved, bindings, finalize_config=finalize,
                                          skip_unknown=False)
  except IOError as e:
    raise UserError(f"gin include not found: {_one_line(e)}; searched {', '.join(gin_search_path())}") from None
  except (ValueError, SyntaxError, KeyError, TypeError, NameError, AttributeError) as e:
    raise UserError(f"bad gin configuration: {_one_line(e)}") from None
  check_command_line_macros(bindings)


# Macros that inspect_data and cache_tokenized read themselves (gin.query_parameter), with or
# without a run gin that references them.
MACROS_READ_BY_CLIS = ("MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS")


def check_command_line_macros(bindings: Sequence[str]) -> None:
  """A macro set on the command line that nothing uses is a typo: gin would bind it silently."""
  config = gin.config._CONFIG  # pylint: disable=protected-access  (gin has no public accessor)
  macro_fn = gin.config.get_configurable(gin.config.macro)
  used = {ref.config_key[0] for ref in gin.config.iterate_references(config, to=macro_fn)}
  used |= set(MACROS_READ_BY_CLIS)
  for binding in bindings:
    m = re.match(r"^\s*([A-Za-z_][\w/]*)\s*=", binding)
    if not m or m.group(1) in used:
      continue
    name = m.group(1)
    close = difflib.get_close_matches(name, sorted(used), n=1)
    hint = (f"did you mean {close[0]}?" if close else
            f"macros the gin files use: {', '.join(sorted(used)) or 'none'}")
    raise UserError(f"--gin.{name} sets a macro that no gin file uses ({hint}); "
                    f"parameters are bound as --gin.function.parameter=VALUE")

