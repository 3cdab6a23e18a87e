"""The package's imports run one way (the rule is in t5x_lite/__init__.py): read from the source
with ast, nothing is imported or run. The top-level tasks/ folder is the package's
`t5x_lite.tasks` and follows the same rule."""

import ast
import configparser
import importlib.util
import pathlib

import t5x_lite

PACKAGE = pathlib.Path(t5x_lite.__file__).parent
# Where `t5x_lite.tasks` is found (tasks/ of the checkout), without running it.
TASKS = pathlib.Path(importlib.util.find_spec("t5x_lite.tasks").submodule_search_locations[0])


def _modules(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
  """module name -> file, for the .py files under `root`, the folder of `package`."""
  found = {}
  for path in root.rglob("*.py"):
    parts = path.relative_to(root).with_suffix("").parts
    found[".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])] = path
  return found


def _imports(path: pathlib.Path, module: str, modules: set[str]) -> set[str]:
  """The package modules the file of `module` imports, at module level or inside functions."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      # `from t5x_lite.data import vocab` imports the module t5x_lite.data.vocab.
      names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
    else:
      continue
    for name in names:
      while name and name not in modules:
        name = name.rpartition(".")[0]
      if name and name != "t5x_lite":
        found.add(name)
  found.discard(module)
  return found


def import_graph() -> dict[str, set[str]]:
  files = {**_modules(PACKAGE, "t5x_lite"), **_modules(TASKS, "t5x_lite.tasks")}
  modules = set(files)
  return {name: _imports(path, name, modules) for name, path in files.items()}


def test_every_module_has_a_layer():
  graph = import_graph()
  assert {"t5x_lite.trainer", "t5x_lite.tasks", "t5x_lite.tasks.c4"} <= set(graph)
  unplaced = sorted(m for m in graph if t5x_lite.layer_of(m) is None)
  assert not unplaced, f"add these modules to a layer in t5x_lite/__init__.py: {unplaced}"


def test_no_import_runs_against_the_layers():
  back_edges = []
  for module, imported in sorted(import_graph().items()):
    layer = t5x_lite.layer_of(module)
    for target in sorted(imported):
      if t5x_lite.layer_of(target) not in t5x_lite.MAY_IMPORT[layer]:
        back_edges.append(f"{module} ({layer}) imports {target} ({t5x_lite.layer_of(target)})")
  assert not back_edges, "\n".join(back_edges)


def test_no_import_cycle():
  graph = import_graph()
  done, on_path = set(), []

  def visit(module):
    if module in on_path:
      raise AssertionError(
        "import cycle: " + " -> ".join(on_path[on_path.index(module) :] + [module])
      )
    if module in done:
      return
    on_path.append(module)
    for target in sorted(graph[module]):
      visit(target)
    on_path.pop()
    done.add(module)

  for module in sorted(graph):
    visit(module)


def test_the_check_sees_a_back_edge(tmp_path):
  # The walk itself: a data module importing the trainer is found, through either import form.
  modules = {"t5x_lite.data.vocab", "t5x_lite.trainer", "t5x_lite.data"}
  for source in (
    "from t5x_lite import trainer\n",
    "import t5x_lite.trainer as t\n",
    "def f():\n  from t5x_lite.trainer import Trainer\n",
  ):
    path = tmp_path / "vocab.py"
    path.write_text(source)
    found = _imports(path, "t5x_lite.data.vocab", modules)
    assert found == {"t5x_lite.trainer"}, source
    assert t5x_lite.layer_of("t5x_lite.trainer") not in t5x_lite.MAY_IMPORT["data"]


def test_setup_cfg_packages_the_package_and_tasks():
  # setup.cfg lists the packages (find: cannot see tasks/ as t5x_lite.tasks): a new sub-package
  # missing there would be missing from wheels.
  config = configparser.ConfigParser()
  config.read(PACKAGE.parent / "setup.cfg")
  listed = config["options"]["packages"].split()
  on_disk = [f"t5x_lite.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")]
  assert sorted(listed) == sorted(["t5x_lite", "t5x_lite.tasks", *on_disk])
  assert config["options"]["package_dir"].split() == ["t5x_lite.tasks", "=", "tasks"]
