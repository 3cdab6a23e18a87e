"""Every function of the package is short enough to read whole: read from the source with ast,
nothing is imported or run."""

import ast
import pathlib

import t5x_lite

PACKAGE = pathlib.Path(t5x_lite.__file__).parent
MAX_LINES = 60  # from `def` to the last line, docstring included

# Being reworked; remove each entry once its function is split.
ALLOWED: set[str] = set()


def function_lengths() -> dict[str, int]:
  """'path:Class.function' -> lines, for every function and method of the package."""
  lengths = {}

  def visit(node: ast.AST, path: str, prefix: str) -> None:
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
        name = prefix + child.name
        lengths[f"{path}:{name}"] = child.end_lineno - child.lineno + 1
        visit(child, path, name + ".")
      elif isinstance(child, ast.ClassDef):
        visit(child, path, prefix + child.name + ".")
      else:
        visit(child, path, prefix)

  for file in sorted(PACKAGE.rglob("*.py")):
    path = file.relative_to(PACKAGE).as_posix()
    visit(ast.parse(file.read_text(encoding="utf-8")), path, "")
  return lengths


def test_no_function_is_longer_than_max_lines():
  long = {f: n for f, n in function_lengths().items() if n > MAX_LINES and f not in ALLOWED}
  assert not long, "split these into named steps:\n" + "\n".join(
    f"  {f} ({n} lines)" for f, n in sorted(long.items())
  )
