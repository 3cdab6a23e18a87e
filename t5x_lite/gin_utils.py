"""Gin flag handling shared by every entry point (T5X-style flags).

Flags: `--gin_file=PATH` (repeatable; searched in the cwd, `$T5X_LITE_GIN_PATH` and the repo's
`gin/`), `--gin_bindings=BINDING` (repeatable) and the shorthand `--gin.NAME=VALUE`.

Gin files and their `include`s are resolved here, against that search path, before gin sees
them: gin's own include lookup treats a directory such as `runs/` in the working directory as a
Python package and fails on it.
"""

from collections.abc import Iterator, Sequence
import contextlib
import difflib
import io
import os
import pathlib
import re

import gin

from t5x_lite import paths
from t5x_lite.errors import UserError, first_line

# The repo's gin/ directory (the package is installed in editable mode from the repo).
REPO_GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"


def gin_search_path() -> list[str]:
  extra = [p for p in os.environ.get("T5X_LITE_GIN_PATH", "").split(os.pathsep) if p]
  return [os.getcwd(), *extra, str(REPO_GIN_DIR)]


def _resolve_gin_file(name: str, included_from: str | None = None) -> str:
  """The file a `--gin_file` or `include` names: the first search-path root holding it."""
  if paths.is_remote(name):  # gs:// and other object stores, read through etils.epath
    from t5x_lite import files

    if files.exists(name):
      return name
  elif os.path.isabs(name) or name.startswith("~"):
    if os.path.isfile(os.path.expanduser(name)):
      return os.path.expanduser(name)
  else:
    for root in gin_search_path():
      candidate = pathlib.Path(root) / name
      if candidate.is_file():
        return str(candidate)
  what = f"gin include {name!r} in {included_from}" if included_from else f"gin file {name!r}"
  raise UserError(f"{what} not found; searched {', '.join(gin_search_path())}")


_INCLUDE = re.compile(r"""^\s*include\s+(['"])([^'"]+)\1\s*(#.*)?$""")


def _read_text(path: str) -> str:
  if paths.is_remote(path):
    from t5x_lite import files

    return files.read_text(path)
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except UnicodeDecodeError:
    raise UserError(f"gin file {path} is not text (not UTF-8); is it a gin file?") from None


# Configs written by earlier versions (a run's config.gin, a checkpoint's stored gin_config) name
# things that have since moved or gone; `upgrade_old_names` rewrites them so they parse again.
_MOVED_MODULES = (  # (pattern, replacement): the seqio tasks, once `tasks`, are t5x_lite.tasks
  (re.compile(r"^(\s*)import tasks\b", re.M), r"\1import t5x_lite.tasks"),
  (re.compile(r"^(\s*)from tasks\b", re.M), r"\1from t5x_lite.tasks"),
  (re.compile(r"(?<![\w.])tasks\.(c4|local_corpora|quickstart)\."), r"t5x_lite.tasks.\1."),
)
# No longer configurable: every caller passes all their arguments, so a binding did nothing.
RETIRED_CONFIGURABLES = ("make_mesh",)
_RETIRED_BINDING = re.compile(
  rf"^(?:[\w./]*\.)?(?:{'|'.join(RETIRED_CONFIGURABLES)})\.\w+\s*=.*$", re.M
)


def upgrade_old_names(text: str) -> str:
  """Gin text of an earlier version, with moved modules renamed and bindings of configurables
  that no longer exist commented out (what they set had no effect)."""
  for pattern, replacement in _MOVED_MODULES:
    text = pattern.sub(replacement, text)
  return _RETIRED_BINDING.sub(lambda m: f"# no longer configurable: {m.group(0)}", text)


@contextlib.contextmanager
def fresh_config():
  """An empty gin config inside the block; the caller's own config is back after it.

  For library code that parses a config of its own (a checkpoint's stored one, a model gin to
  compare with): `gin.clear_config()` alone would wipe the caller's bindings. Gin has no public
  way to save its state, so its module-level tables are copied and put back.
  """
  # pylint: disable=protected-access
  tables = gin.config
  saved = (
    {key: dict(values) for key, values in tables._CONFIG.items()},
    {key: dict(values) for key, values in tables._OPERATIVE_CONFIG.items()},
    set(tables._IMPORTS),
    dict(tables._SINGLETONS),
    gin.config_is_locked(),
  )
  gin.clear_config()
  try:
    yield
  finally:
    gin.clear_config()
    tables._CONFIG.update(saved[0])
    tables._OPERATIVE_CONFIG.update(saved[1])
    tables._IMPORTS.update(saved[2])
    tables._SINGLETONS.update(saved[3])
    tables._set_config_is_locked(saved[4])


def expand_gin_file(path: str, _stack: tuple[str, ...] = ()) -> str:
  """The text of a gin file with every `include` replaced by the resolved file's own expansion.

  Gin's include is textual (it parses the included file in place, into the same global config),
  so inlining changes nothing but who finds the file.
  """
  if path in _stack:
    raise UserError(f"gin include cycle: {' -> '.join((*_stack, path))}")
  lines = []
  for line in _read_text(path).splitlines():
    m = _INCLUDE.match(line)
    if m:
      included = _resolve_gin_file(m.group(2), included_from=path)
      lines.append(f"# include {m.group(2)!r} ({included})")
      lines.append(expand_gin_file(included, (*_stack, path)))
    else:
      lines.append(line)
  return upgrade_old_names("\n".join(lines) + "\n")


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
      name, sep, value = arg[len("--gin.") :].partition("=")
      if not sep:
        raise UserError(f"flag {arg} must look like --gin.NAME=VALUE")
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
    i += 1
  return files, bindings, rest


# The configurables of the data side's seqio tasks and pipelines (t5x_lite/data, tasks/), which a
# process that reads no task's pipeline does not import (tests/test_no_tensorflow.py keeps this
# list complete). Without them, bindings of these are set aside, and bindings of any other
# unknown name are still errors.
TASK_DATA_CONFIGURABLES = (
  "c4_json",
  "c4_tfds",
  "data_quality",
  "data_reader",
  "jsonl_corpus",
  "logical_shards",
  "quickstart_corpus",
  "ready_made",
  "row_digests",
  "seq2seq_files",
  "span_corruption_config",
  "synthetic",
  "task_vocabulary",
  "text_corpus",
  "tokenized_cache",
)
# gin `import` lines of the data side's modules (runs/c4.gin has two): skipped without the tasks.
_DATA_IMPORT = re.compile(r"^(\s*)((?:from|import)\s+t5x_lite\.(?:data|tasks)\b.*)$", re.M)


def parse_gin(
  files: Sequence[str], bindings: Sequence[str], finalize: bool = True, with_tasks: bool = True
) -> None:
  """Parses gin files and bindings; any mistake becomes a one-line UserError.

  `with_tasks=False`: for a process that imports no seqio task (synthetic or ready-made data, or
  a command that reads no data): the files' imports of data modules and bindings of the tasks'
  configurables (TASK_DATA_CONFIGURABLES) are set aside, so TensorFlow is never imported.
  """
  resolved = [_resolve_gin_file(f) for f in files]
  skip = False if with_tasks else list(TASK_DATA_CONFIGURABLES)
  texts = []
  try:
    for path in resolved:
      content = expand_gin_file(path)
      if not with_tasks:
        content = _DATA_IMPORT.sub(r"\1# without the tasks: \2", content)
      texts.append(content)
      text = io.StringIO(content)
      text.name = path  # gin names the file in its error locations
      gin.parse_config(text, skip_unknown=skip)
    gin.parse_config(list(bindings), skip_unknown=skip)
    if finalize:
      gin.finalize()
  except OSError as e:  # found, but unreadable
    raise UserError(f"cannot read a gin file: {first_line(e, limit=None)}") from None
  except (ValueError, SyntaxError, KeyError, TypeError, NameError, AttributeError) as e:
    raise UserError(f"bad gin configuration: {first_line(e, limit=None)}") from None
  # Bindings set aside still use their macros (e.g. C4_TFDS_DATA_DIR).
  aside = (
    set() if with_tasks else set(re.findall(r"%([A-Za-z_]\w*)", "\n".join(texts + list(bindings))))
  )
  check_command_line_macros(bindings, aside)


@contextlib.contextmanager
def required_bindings_checked() -> Iterator[None]:
  """Gin refuses a call of a configurable whose gin.REQUIRED parameters nothing binds with a
  RuntimeError (and its traceback); here that is a one-line UserError naming them."""
  try:
    yield
  except RuntimeError as e:
    m = re.match(r"Required bindings for `([\w.]+)` not provided in config: \[(.*)\]", str(e))
    if not m:
      raise
    names = [f"{m.group(1)}.{name}" for name in re.findall(r"'(\w+)'", m.group(2))]
    raise UserError(
      f"the gin files bind no {', '.join(names)}; add the gin file that does (a model gin binds "
      f"model_config.*, a run gin such as runs/pretrain.gin binds train.*) or pass "
      f"--gin.{names[0]}=VALUE"
    ) from None


def required_macro(name: str):
  """The value of a macro the gin files must set (for commands that read it themselves)."""
  try:
    return gin.query_parameter(f"{name}/macro.value")
  except ValueError:
    raise UserError(f"the gin files do not set {name}; pass --gin.{name}=...") from None


_UNBOUND = object()


def bound_value(selector: str, default=_UNBOUND):
  """The value gin binds to `selector` (e.g. 'train.batch_size'), a macro (`%NAME`) evaluated;
  `default` when nothing binds it (without a default: a one-line error)."""
  try:
    value = gin.query_parameter(selector)
  except ValueError:
    if default is _UNBOUND:
      raise UserError(f"the gin files bind no {selector}; pass --gin.{selector}=VALUE") from None
    return default
  if isinstance(value, gin.config.ConfigurableReference):
    return value.scoped_configurable_fn()
  return value


# Macros that inspect_data and cache_tokenized read themselves (gin.query_parameter), with or
# without a run gin that references them.
MACROS_READ_BY_CLIS = ("MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS")


def check_command_line_macros(bindings: Sequence[str], also_used: set[str] = frozenset()) -> None:
  """A macro set on the command line that nothing uses is a typo: gin would bind it silently."""
  config = gin.config._CONFIG  # pylint: disable=protected-access  (gin has no public accessor)
  macro_fn = gin.config.get_configurable(gin.config.macro)
  used = {ref.config_key[0] for ref in gin.config.iterate_references(config, to=macro_fn)}
  used |= set(MACROS_READ_BY_CLIS) | set(also_used)
  for binding in bindings:
    m = re.match(r"^\s*([A-Za-z_][\w/]*)\s*=", binding)
    if not m or m.group(1) in used:
      continue
    name = m.group(1)
    close = difflib.get_close_matches(name, sorted(used), n=1)
    hint = (
      f"did you mean {close[0]}?"
      if close
      else f"macros the gin files use: {', '.join(sorted(used)) or 'none'}"
    )
    raise UserError(
      f"--gin.{name} sets a macro that no gin file uses ({hint}); "
      f"parameters are bound as --gin.function.parameter=VALUE"
    )
