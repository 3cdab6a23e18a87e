"""TensorFlow, seqio and tensorflow_datasets belong to the data side (t5x_lite/data/ and tasks/): no
other module imports them when it is imported, so the train process needs none of them where its
data needs none. Read from the source with ast, nothing is imported or run (as test_layering.py).

An import inside a function runs only when that function does (the lazy imports of the data side's
users); one under `if TYPE_CHECKING:` never runs. Every other import statement runs with its module.
"""

import ast
import importlib.util
import pathlib

import pytest

import t5x_lite

PACKAGE = pathlib.Path(t5x_lite.__file__).parent
TASKS = pathlib.Path(importlib.util.find_spec("t5x_lite.tasks").submodule_search_locations[0])
TF_PACKAGES = ("tensorflow", "seqio", "tensorflow_datasets")
# The commands that drive accelerators (or plan for them): they start without the TF packages.
ENTRY_POINTS = ("train", "export_hf", "infer", "model_info", "plan")


def _modules() -> dict[str, pathlib.Path]:
  found = {}
  for root, package in ((PACKAGE, "t5x_lite"), (TASKS, "t5x_lite.tasks")):
    for path in root.rglob("*.py"):
      parts = path.relative_to(root).with_suffix("").parts
      found[".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])] = path
  return found


MODULES = _modules()


def on_data_side(module: str) -> bool:
  return module.startswith(("t5x_lite.data", "t5x_lite.tasks"))


def _is_type_checking(node: ast.If) -> bool:
  test = node.test
  return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
    isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
  )


def _import_nodes(tree: ast.AST, in_functions: bool):
  """The import statements that run with the module (and, with `in_functions`, those inside its
  functions, one level: what calling them imports)."""
  for node in ast.iter_child_nodes(tree):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      if in_functions:
        yield from (n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    elif isinstance(node, ast.If) and _is_type_checking(node):
      yield from _import_nodes(ast.Module(body=node.orelse, type_ignores=[]), in_functions)
    else:
      yield from _import_nodes(node, in_functions)


def _imported_names(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names]
  base = node.module or ""
  if node.level:  # relative: from the module's package
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
      package = package.rpartition(".")[0]
    base = f"{package}.{base}".rstrip(".")
  return [base] + [f"{base}.{alias.name}" for alias in node.names]


def imports(module: str, in_functions: bool = False) -> tuple[set[str], set[str]]:
  """(the package modules, the TF packages) that importing `module` imports directly. Importing
  a module imports its parent packages too."""
  tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
  package_modules, tf_packages = set(), set()
  for node in _import_nodes(tree, in_functions):
    for name in _imported_names(module, node):
      if name.split(".")[0] in TF_PACKAGES:
        tf_packages.add(name.split(".")[0])
      while name and name not in MODULES:
        name = name.rpartition(".")[0]
      while name:  # the module and its parents
        if name in MODULES:
          package_modules.add(name)
        name = name.rpartition(".")[0]
  package_modules.discard(module)
  return package_modules, tf_packages


def test_the_tf_packages_stay_on_the_data_side():
  found = [
    f"{module} imports {', '.join(sorted(tf))} at module level (import it inside the function "
    f"that needs it, or move the code to t5x_lite/data/)"
    for module in sorted(MODULES)
    if not on_data_side(module) and (tf := imports(module)[1])
  ]
  assert not found, "\n".join(found)


def test_the_check_sees_module_level_imports_only():
  tree = ast.parse(
    "import seqio\nfrom tensorflow.io import gfile\ntry:\n  import tensorflow_datasets\n"
    "except ImportError:\n  pass\nif TYPE_CHECKING:\n  import tensorflow\n"
    "def f():\n  import tensorflow\n"
  )
  names = {
    n.names[0].name if isinstance(n, ast.Import) else n.module for n in _import_nodes(tree, False)
  }
  assert names == {"seqio", "tensorflow.io", "tensorflow_datasets"}


def _chain_to_tf(entry: str) -> list[str] | None:
  """A chain of imports from the command `entry` (what it imports when it runs) to a module that
  imports a TF package when imported, or None."""
  first, tf = imports(entry, in_functions=True)
  if tf:
    return [entry, *sorted(tf)[:1]]
  parent = {m: entry for m in first}
  todo = sorted(first)
  while todo:
    module = todo.pop(0)
    package_modules, tf = imports(module)
    if tf:
      chain = [module]
      while chain[-1] != entry:
        chain.append(parent[chain[-1]])
      return [*reversed(chain), sorted(tf)[0]]
    for name in sorted(package_modules - parent.keys() - {entry}):
      parent[name] = module
      todo.append(name)
  return None


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_commands_start_without_the_tf_packages(entry):
  """What the command imports when it runs, and everything that imports in turn at module level,
  imports none of the TF packages (the data modules that need them are imported lazily, where
  the configured data needs them)."""
  chain = _chain_to_tf(f"t5x_lite.{entry}")
  assert chain is None, " -> ".join(chain)
