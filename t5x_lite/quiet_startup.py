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

`drop_gloo_lines` keeps Gloo's connection lines off a multi-process command's stdout.
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


# Gloo (jax's CPU collectives across processes) writes "[Gloo] Rank 0 is connected to 1 peer
# ranks ..." to stdout from C++, once per group of processes, whenever a collective first needs
# one. A child process copies the command's stdout, less those lines: it reads until the command
# has exited by any path (os._exit and a crash included), so no line of ours is lost or delayed.
_WITHOUT_GLOO_LINES = """
import signal, sys
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
  signal.signal(s, signal.SIG_IGN)  # ends with the command's output, not with its signals
out = sys.stdout.buffer
for line in sys.stdin.buffer:
  if not line.startswith(b"[Gloo] "):
    out.write(line)
    out.flush()
"""
_filters = []  # the copying processes (kept referenced: they outlive this one's objects)


def drop_gloo_lines() -> None:
  """From now on, the lines Gloo prints are kept off this process's stdout (file descriptor 1,
  which native code writes to)."""
  import subprocess

  sys.stdout.flush()
  child = subprocess.Popen(
    [sys.executable, "-I", "-S", "-c", _WITHOUT_GLOO_LINES], stdin=subprocess.PIPE
  )
  os.dup2(child.stdin.fileno(), 1)
  child.stdin.close()  # fd 1 is now the only end this process writes to
  _filters.append(child)


def install() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if not any(isinstance(f, _QuietFirstImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietFirstImport())


install()
