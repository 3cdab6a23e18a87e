"""seqio tasks of t5x_lite, imported as `t5x_lite.tasks`; importing it registers them all.

Span corruption (T5's objective) over:
  c4_span_corruption          TFDS c4/en (gin: c4_tfds.data_dir, c4_tfds.version)
  c4_json_span_corruption     raw c4-{train,validation}.*-of-*.json.gz shards (gin: c4_json.data_dir)
  text_span_corruption        plain text, one document per line (gin: text_corpus.*)
  jsonl_span_corruption       JSON lines (gin: jsonl_corpus.*)
  quickstart_span_corruption  the offline smoke-test corpus, built on first use (not C4)
and seq2seq_files: fine-tuning examples from local TSV / JSON-lines files (gin: FINETUNE_*).
Locations and vocabularies are read from gin when a dataset is built (see t5x_lite.data.registry).

Every module of this folder is imported, in name order, so a task of your own is a module added
here (docs/data.md, "A task of your own"); names starting with `_` are skipped (helpers).
"""

import importlib
import os
import pkgutil
import traceback

from t5x_lite.errors import UserError, first_line


def _import_all() -> None:
  for module in pkgutil.iter_modules(__path__):
    if module.name.startswith("_"):
      continue
    try:
      importlib.import_module(f"{__name__}.{module.name}")
    except Exception as e:  # often a user's module: one line naming its file, no traceback
      raise UserError(
        f"task module {_where(module, e)}: {type(e).__name__}: {first_line(e)}"
      ) from e


def _where(module: pkgutil.ModuleInfo, error: Exception) -> str:
  """The module's file, with the line that failed when the traceback passes through it."""
  path = os.path.join(module.module_finder.path, module.name)
  path = os.path.join(path, "__init__.py") if module.ispkg else f"{path}.py"
  frames = traceback.extract_tb(error.__traceback__)
  line = next((f.lineno for f in reversed(frames) if f.filename == path), None)
  return f"{path}:{line}" if line else path


# The pipeline that reads the tasks registers gin configurables of its own (data_reader,
# row_digests): importing the tasks makes every data binding of a run gin known.
from t5x_lite.data import pipeline  # noqa: E402,F401

_import_all()
