"""Orbax checkpoints of the train state, the data position and the operative config.

Layout under MODEL_DIR/checkpoints/<step>/ (managed by orbax.CheckpointManager, which writes a
step to a temporary directory and renames it when complete, so a crash mid-save never leaves a
step that looks complete):
  state/  parameters, optimizer state, step and RNG (StandardSave, sharded, async)
  meta/   JSON: step, batches consumed per process, the operative gin config
The tf.data iterator of each process (exact position, shuffle buffers included) is saved beside
it in MODEL_DIR/data_state/<step>/process_<i>/, written before the orbax save and renamed into
place, and is only used together with a complete orbax step. Paths go through orbax and
tf.io.gfile, so MODEL_DIR may be local or gs://.
"""

import os
import time
from typing import Any, Callable

import gin
import jax
import jax.experimental.multihost_utils
import orbax.checkpoint as ocp
import tensorflow as tf

from t5x_lite.errors import UserError


def _rmtree(path: str) -> None:
  if tf.io.gfile.exists(path):
    tf.io.gfile.rmtree(path)


@gin.configurable
class Checkpointer:

  def __init__(self, model_dir: str, max_to_keep: int | None = 3, keep_period: int | None = None,
               async_save: bool = True):
    self.model_dir = model_dir if "://" in model_dir else os.path.abspath(model_dir)
    self.directory = os.path.join(self.model_dir, "checkpoints")
    self.data_directory = os.path.join(self.model_dir, "data_state")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, keep_period=keep_period, create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))

  # -- saving ------------------------------------------------------------------------------------
  def save(self, step: int, state: Any, meta: dict, save_data_iterator: Callable[[str], None] | None,
           force: bool = True) -> None:
    """Starts saving `state` at `step` (asynchronously); the data position is written first."""
    if save_data_iterator is not None:
      final = self._data_path(step)
      tmp = final + ".tmp"
      _rmtree(tmp)
      save_data_iterator(tmp)
      _rmtree(final)
      tf.io.gfile.makedirs(os.path.dirname(final))
      tf.io.gfile.rename(tmp, final, overwrite=True)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def wait(self) -> None:
    self.manager.wait_until_finished()
    self._prune_data_states()

  def _data_path(self, step: int) -> str:
    return os.path.join(self.data_directory, str(step), f"process_{jax.process_index()}")

  def _prune_data_states(self) -> None:
    if jax.process_index() != 0 or not tf.io.gfile.isdir(self.data_directory):
      return
    keep = {str(s) for s in self.manager.all_steps()}
    for name in tf.io.gfile.listdir(self.data_directory):
      if name.rstrip("/") not in keep:
        _rmtree(os.path.join(self.data_directory, name.rstrip("/")))

  # -- restoring ---------------------------------------------------------------------------------
  def all_steps(self) -> list[int]:
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def data_state_path(self, step: int) -> str | None:
    path = self._data_path(step)
    return path if tf.io.gfile.isdir(path) else None

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict] | None:
    """Restores into the shardings of `abstract_state`: the latest complete step, or `step`.

    A latest step that cannot be read is reported by name and the previous one is used.
    Returns None when there is no checkpoint.
    """
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise UserError(f"no checkpoint for step {step} in {self.directory}; available: {steps}")
      steps = [step]
    for candidate in reversed(steps):
      try:
        restored = self.manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return candidate, restored.state, dict(restored.meta)
      except Exception as e:  # corrupt, truncated or incompatible: say which, try the previous
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        if step is not None or candidate == steps[0]:
          raise UserError(f"checkpoint {os.path.join(self.directory, str(candidate))} cannot be "
                          f"restored: {reason}") from None
        moved = self._quarantine(candidate)
        print(f"warning: checkpoint {os.path.join(self.directory, str(candidate))} cannot be "
              f"restored ({reason}); moved to {moved}, using the previous one", flush=True)
    return None

  def _quarantine(self, step: int) -> str:
    """Renames an unreadable step out of the manager's sight (kept for inspection, never deleted),
    so that training past it can write that step again."""
    source = os.path.join(self.directory, str(step))
    target = os.path.join(self.directory, f"unreadable.{step}.{int(time.time())}")
    if jax.process_index() == 0 and tf.io.gfile.isdir(source):
      tf.io.gfile.rename(source, target)
    jax.experimental.multihost_utils.sync_global_devices(f"quarantine_{step}")
    self.manager.reload()
    return target

  def close(self) -> None:
    self.wait()
    self.manager.close()
