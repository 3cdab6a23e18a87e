"""Keeps the native libraries' start-up messages off the console of the `python -m t5x_lite.*`
commands: TensorFlow's oneDNN and CUDA-probing banners, absl's "All log messages before
absl::InitializeLog() ...", "failed call to cuInit" on a machine without a GPU. tf.data is all TF
does here, so none of them concern the user, and they would come before a command's output or
its one-line error.

Each command imports this module before anything else. It sets TF_CPP_MIN_LOG_LEVEL (an explicit
setting wins) and hooks the first import of tensorflow and of jax, wherever it happens (most
commands import them lazily, so that `--help` and early errors stay fast): that import runs with
stderr captured, and what it printed is shown only if the import fails. The library itself never
imports this module: code that uses t5x_lite as a library keeps its own console.
"""

import contextlib
import importlib.abc
import os
import sys
import tempfile

_NOISY_PACKAGES = ("tensorflow", "jax")


@contextlib.contextmanager
def banners_hidden():
  """Captures what the process writes to stderr (file descriptor 2, which native code writes to)
  inside the block; shows it only if the block raises (not for a UserError, whose one line says
  what is wrong)."""
  from t5x_lite.errors import UserError

  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    except UserError:
      raise
    except BaseException:
      os.dup2(saved, 2)
      captured.seek(0)
      sys.stderr.write(captured.read().decode(errors="replace"))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


class _QuietLoader(importlib.abc.Loader):
  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    # The package keeps its real loader (importlib.resources and friends ask it for files).
    module.__loader__ = module.__spec__.loader = self._loader
    with banners_hidden():
      self._loader.exec_module(module)


class _QuietFirstImport(importlib.abc.MetaPathFinder):
  """Finds the noisy packages with the other finders and wraps their loader."""

  def find_spec(self, name, path=None, target=None):
    if name not in _NOISY_PACKAGES:
      return None
    for finder in sys.meta_path:
      if finder is self or not hasattr(finder, "find_spec"):
        continue
      spec = finder.find_spec(name, path, target)
      if spec is not None:
        if spec.loader is not None:
          spec.loader = _QuietLoader(spec.loader)
        return spec
    return None


def install() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if not any(isinstance(f, _QuietFirstImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietFirstImport())


install()
