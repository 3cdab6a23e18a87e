"""SIGTERM or Ctrl-C before a run's first step ends the train command at once, with exit code 0.

Until a step has trained there is nothing to save, but start-up can take minutes (reading data,
building pipelines, compiling, evaluating), much of it in native code, where a Python signal
handler waits until the call returns. So the train command blocks SIGTERM and SIGINT in every
thread from its first line (threads inherit the mask), and a watcher thread takes them: during
start-up it runs the registered clean-ups (the run lock) and exits. Once the first step has run,
`training_started()` stops the watcher and unblocks the signals in the main thread, where the
training loop's handlers (several processes: JAX's preemption notifier) take over and save at
the next step. Standard library only: this runs before jax or TensorFlow is imported.
"""

from collections.abc import Callable
import os
import signal
import threading

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_guard: "_StartupGuard | None" = None


class _StartupGuard:
  def __init__(self):
    self._cleanups: list[Callable[[], None]] = []
    self._stop = threading.Event()
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    self._thread = threading.Thread(target=self._watch, name="startup-signals", daemon=True)
    self._thread.start()

  def _watch(self) -> None:
    while not self._stop.is_set():
      received = signal.sigtimedwait(_SIGNALS, 0.2)
      if received is None:
        continue
      if self._stop.is_set():
        # Training began meanwhile: send it again, to the main thread's handlers.
        os.kill(os.getpid(), received.si_signo)
        return
      name = "Ctrl-C" if received.si_signo == signal.SIGINT else "SIGTERM"
      print(f"{name} during start-up: no step trained yet, nothing to save; exiting", flush=True)
      for cleanup in reversed(self._cleanups):
        try:
          cleanup()
        except Exception:  # noqa: BLE001  (exiting anyway; the rest must still run)
          pass
      os._exit(0)

  def release(self) -> None:
    self._stop.set()
    self._thread.join()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


def guard_startup() -> None:
  """Called first thing by the train command (before any thread starts)."""
  global _guard
  if _guard is None and threading.current_thread() is threading.main_thread():
    _guard = _StartupGuard()


def on_startup_exit(cleanup: Callable[[], None]) -> None:
  """Runs `cleanup` if a signal ends the process during start-up (no-op without the guard)."""
  if _guard is not None:
    _guard._cleanups.append(cleanup)


def training_started() -> None:
  """The first step has run: from now on signals ask the training loop to save and stop."""
  global _guard
  if _guard is not None:
    guard, _guard = _guard, None
    guard.release()
