"""t5x_lite: pretrain T5 encoder-decoder models with span corruption, in JAX/Flax.

Imports run one way, from the commands down to the model (tests/test_layering.py checks it):

  cli       the `python -m t5x_lite.X` commands             may import every layer
  training  the loop, the train step, checkpoints, metrics  may import hf, model, data, base
  hf        Hugging Face files, weight mapping, model card   may import model, data, base
  data      seqio tasks, sources, vocabularies, the pipeline may import base
  model     model config, layers, the model, mesh/rules, optimizer  may import base
  base      errors, paths, token ids, gin flags, progress    imports nothing of the package

So `data` knows nothing of the model or of training, the model nothing above it, hf nothing of
training (training may read HF files: fine-tuning starts from them), and no library module imports
a command: code a command and a library module share lives in the library module. A new module is
added to a layer below.
"""

import importlib.util
import pathlib
import sys

__version__ = "0.1.0"

LAYERS = {
  "base": (
    "errors",
    "paths",
    "files",
    "tokens",
    "gin_utils",
    "progress",
    "commands",
    "flops",
    "step_fallback",
    "shutdown",
    "quiet_startup",
  ),
  "model": ("config", "attention", "layers", "network", "models", "partitioning", "optimizers"),
  "data": ("data", "tasks"),  # the sub-packages, whole (tasks: the top-level tasks/ folder)
  "training": (
    "trainer",
    "training",
    "checkpoints",
    "storage_faults",
    "resume_check",
    "metrics_writer",
    "tensorboard_events",
    "run_lock",
    "run_setup",
    "memory_fit",
    "efficiency",
    "distributed",
    "finetune_init",
    "decode_eval",
  ),
  "hf": ("hf_files", "hf_mapping", "hf_reader", "model_card"),
  "cli": (
    "train",
    "export_hf",
    "import_hf",
    "infer",
    "inspect_data",
    "cache_tokenized",
    "quickstart",
    "train_vocab",
    "model_info",
    "plan",
    "preflight",
    "preflight_report",
    "write_examples",
  ),
}

MAY_IMPORT = {
  "base": {"base"},
  "model": {"model", "base"},
  "data": {"data", "base"},
  "training": {"training", "hf", "model", "data", "base"},
  "hf": {"hf", "model", "data", "base"},
  "cli": set(LAYERS),
}


def layer_of(module: str) -> str | None:
  """The layer of a module of the package (`t5x_lite.data.vocab` -> 'data'), None if unplaced."""
  if module == "t5x_lite":
    return "base"
  top = module.removeprefix("t5x_lite.").split(".")[0]
  return next((layer for layer, names in LAYERS.items() if top in names), None)


# The seqio tasks live in the top-level tasks/ folder, imported as `t5x_lite.tasks` (the name run
# configs record; no generic top-level `tasks` package is installed). A wheel holds the folder as
# t5x_lite/tasks (setup.cfg, package_dir). In a checkout (an editable install, or the checkout on
# the path) the tasks/ beside this package is read in place, so a module added there needs no
# reinstall; this finder goes first so that neither another install of the package nor a leftover
# t5x_lite/tasks/__pycache__ (a namespace package to Python) is taken for it.
_CHECKOUT_TASKS = pathlib.Path(__file__).parent.parent / "tasks"


class _CheckoutTasksFinder:
  @staticmethod
  def find_spec(name, path=None, target=None):
    if name != "t5x_lite.tasks":
      return None
    return importlib.util.spec_from_file_location(
      name, _CHECKOUT_TASKS / "__init__.py", submodule_search_locations=[str(_CHECKOUT_TASKS)]
    )


if (
  not (pathlib.Path(__file__).parent / "tasks" / "__init__.py").is_file()
  and (_CHECKOUT_TASKS / "__init__.py").is_file()
):
  sys.meta_path.insert(0, _CheckoutTasksFinder)
