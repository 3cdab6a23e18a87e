"""Orbax checkpoints of the train state, the data position and the operative config.

Layout under MODEL_DIR/checkpoints/<step>/ (managed by orbax.CheckpointManager, which writes a
step to a temporary directory and renames it when complete, so a crash mid-save never leaves a
step that looks complete):
  state/  parameters, optimizer state, step and RNG (StandardSave, sharded, async)
  meta/   JSON: step, batches consumed, the operative gin config, the model config
          and the data settings a resume is checked against (t5x_lite/resume_check.py)
The data position of each logical data shard (a few numbers, data/stream_iterator.py; or, for
data read by seqio pipelines, a tf.data iterator checkpoint) is saved beside it in
MODEL_DIR/data_state/<step>/shard_<j>/ by the process that reads it, written before the orbax
save and renamed into place, and is only used together with a complete orbax step; a run on
another process count restores the shards it reads (data/logical_shards.py). Paths go through
orbax and etils.epath (t5x_lite/files.py), so MODEL_DIR may be local or gs://.

A save that fails (in the background or not) is a StorageError naming its step
(storage_faults.py); `check_for_errors` finds a failed background save without waiting.
"""

from collections.abc import Callable, Iterator
import contextlib
import os
import time
from typing import Any

import gin
import jax
import jax.experimental.multihost_utils
import orbax.checkpoint as ocp

from t5x_lite import files, paths, resume_check, step_fallback, storage_faults
from t5x_lite.errors import StorageError, UserError


@gin.configurable
class Checkpointer:
  def __init__(
    self,
    model_dir: str,
    max_to_keep: int | None = 3,
    keep_period: int | None = None,
    async_save: bool = True,
  ):
    self.model_dir = model_dir if paths.is_remote(model_dir) else os.path.abspath(model_dir)
    self.directory = os.path.join(self.model_dir, "checkpoints")
    self.data_directory = os.path.join(self.model_dir, "data_state")
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      keep_period=keep_period,
      create=True,
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True,
      # A step directory that cannot be created fails save() itself. Created in the background
      # (Orbax's default), the failure left Orbax's writer threads waiting 300 s for a directory
      # that never came, and the process could not exit meanwhile.
      async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
    )
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_names=("state", "meta"),
      item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
    )
    self._saving: int | None = None  # the step of the last save started
    self._unchecked = False  # whether that save's end is yet to be looked at

  # -- saving ------------------------------------------------------------------------------------
  def save(
    self,
    step: int,
    state: Any,
    meta: dict,
    save_data_iterator: Callable[[str], None] | None,
    faults: storage_faults.Faults | None = None,
  ) -> None:
    """Starts saving `state` at `step` (asynchronously); the data position is written first.

    What each process writes alone (the previous save's end, its data position) is agreed on
    through `faults` before Orbax's save, which waits for every process.
    """
    faults = faults or storage_faults.Faults()
    with faults.held(), self._failed_save():
      # Orbax's save would wait for the previous one too. (Not self.wait(): pruning data
      # positions now would race with other processes writing this step's.)
      self.manager.wait_until_finished()
    with faults.held():
      if save_data_iterator is not None:
        # Every process writes its own shards into the step's directory (each renamed into place).
        with storage_faults.writing(f"the data position of step {step}", self._data_path(step)):
          save_data_iterator(self._data_path(step))
    faults.agree()
    self._saving, self._unchecked = step, True
    with self._failed_save():
      self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True,
      )

  def check_for_errors(self) -> None:
    """Raises a StorageError if the last background save has failed; never waits.

    Orbax hands a background error to its finalizing thread, which raises it when joined:
    joining it once it has ended costs nothing. (With several processes it ends only after a
    barrier with the others.)
    """
    if self._unchecked and not self.manager.is_saving_in_progress():
      self._unchecked = False
      with self._failed_save():
        self.manager.wait_until_finished()

  def wait(self) -> None:
    with self._failed_save():
      self.manager.wait_until_finished()
    with storage_faults.writing("old data positions", self.data_directory):
      self._prune_data_states()

  @contextlib.contextmanager
  def _failed_save(self) -> Iterator[None]:
    try:
      yield
    except StorageError:
      raise
    except Exception as e:
      if not storage_faults.is_storage_error(e):
        raise
      raise storage_faults.failure(
        f"checkpoint step {self._saving}", os.path.join(self.directory, str(self._saving)), e
      ) from e

  def latest_complete(self) -> int | None:
    """The newest step that was saved completely, as the storage lists it (None when it
    cannot be listed)."""
    try:
      steps = self.all_steps()
    except Exception:  # noqa: BLE001  (storage that failed a write may fail a listing too)
      return None
    return steps[-1] if steps else None

  def _data_path(self, step: int) -> str:
    return os.path.join(self.data_directory, str(step))

  def _prune_data_states(self) -> None:
    if jax.process_index() != 0 or not files.isdir(self.data_directory):
      return
    keep = {str(s) for s in self.manager.all_steps()}
    for name in files.listdir(self.data_directory):
      if name not in keep:
        files.rmtree(os.path.join(self.data_directory, name))

  # -- restoring ---------------------------------------------------------------------------------
  def all_steps(self) -> list[int]:
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def data_state_path(self, step: int) -> str | None:
    path = self._data_path(step)
    return path if files.isdir(path) else None

  def read_meta(self, step: int) -> dict:
    return dict(
      self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    )

  def saved_shapes(self, step: int) -> dict[str, tuple]:
    """{leaf name: shape} of a step's state, from orbax's metadata (no array is read)."""
    return resume_check.leaf_shapes(self.manager.item_metadata(step)["state"])

  def restore(
    self,
    abstract_state: Any,
    step: int | None = None,
    check_meta: Callable[[int, dict], None] | None = None,
  ) -> tuple[int, Any, dict] | None:
    """Restores into the shardings of `abstract_state`: the latest complete step, or `step`.

    Before a step's arrays are read, `check_meta(step, meta)` may refuse it (a UserError for a
    changed setting) and the saved shapes are compared with `abstract_state`: a checkpoint this run
    cannot use is an error that leaves every checkpoint where it is. Only a step whose meta or
    arrays fail to read is moved aside (kept, renamed), at most one per start; the previous step
    is then used. Returns None when there is no checkpoint.
    """
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise UserError(f"no checkpoint for step {step} in {self.directory}; available: {steps}")
      steps = [step]
    expected = resume_check.leaf_shapes(abstract_state)

    def attempt(candidate: int) -> tuple[int, Any, dict]:
      with step_fallback.reading("meta"):
        meta = self.read_meta(candidate)
      with step_fallback.reading("state"):
        saved = self.saved_shapes(candidate)
      if check_meta is not None:
        check_meta(candidate, meta)
      mismatch = resume_check.state_mismatch(saved, expected)
      if mismatch:
        raise UserError(
          f"checkpoint {os.path.join(self.directory, str(candidate))} holds a state "
          f"of another shape than this run builds ({mismatch}); was the model or "
          f"optimizer changed? Use another MODEL_DIR for a new run (the checkpoints "
          f"are unchanged)"
        )
      with step_fallback.reading("state"):
        restored = self.manager.restore(
          candidate, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
      return candidate, restored.state, meta

    moved = []
    return step_fallback.newest_readable(
      steps, attempt, lambda s, e: moved.append(self._unreadable(s, steps, e, moved, step))
    )

  def _unreadable(
    self, step: int, steps: list[int], error: BaseException, moved: list[str], explicit: int | None
  ) -> str:
    """Moves an unreadable latest step aside and returns where; refuses to move a second one."""
    where = os.path.join(self.directory, str(step))
    reason = step_fallback.reason(error)
    if explicit is not None or step == steps[0] or moved:
      earlier = f"{moved[0]} was moved aside on this start; " if moved else ""
      older = [s for s in steps if s < step]
      fallback = (
        f"run again to move it aside too and use step {older[-1]}, or "
        if older and explicit is None
        else ""
      )
      raise UserError(
        f"checkpoint {where} cannot be read ({reason}); {earlier}nothing else was "
        f"moved: {fallback}restore it from a copy, or use another MODEL_DIR"
      )
    target = self._quarantine(step)
    previous = max(s for s in steps if s < step)
    print(
      f"warning: checkpoint {where} cannot be read ({reason}); moved it to {target}, falling "
      f"back to step {previous}",
      flush=True,
    )
    return target

  def _quarantine(self, step: int) -> str:
    """Renames an unreadable step out of the manager's sight (kept for inspection, never deleted),
    so that training past it can write that step again."""
    source = os.path.join(self.directory, str(step))
    target = os.path.join(self.directory, f"unreadable.{step}.{int(time.time())}")
    if jax.process_index() == 0 and files.isdir(source):
      with storage_faults.writing(f"unreadable checkpoint step {step} (moving it aside)", target):
        files.rename(source, target)
    jax.experimental.multihost_utils.sync_global_devices(f"quarantine_{step}")
    self.manager.reload()
    return target

  def close(self) -> None:
    self.wait()
    with self._failed_save():
      self.manager.close()


def measure_write_rate(directory: str, num_bytes: int = 256 << 20) -> float:
  """Bytes per second of writing `num_bytes` into `directory` (or, where it does not exist yet,
  its nearest existing parent), through to the disk; the test file is removed."""
  if not paths.is_remote(directory):
    directory = os.path.abspath(directory)
    while not os.path.isdir(directory):
      directory = os.path.dirname(directory)
  path = os.path.join(directory, f".t5x_lite_write_test_{os.getpid()}")
  chunk = os.urandom(min(num_bytes, 8 << 20))
  started = time.perf_counter()
  try:
    if paths.is_remote(directory):  # an object store: the upload completes on close
      with files.path(path).open("wb") as f:
        for _ in range(num_bytes // len(chunk)):
          f.write(chunk)
    else:
      with open(path, "wb") as f:
        for _ in range(num_bytes // len(chunk)):
          f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - started
  finally:
    if files.exists(path):
      files.remove(path)
  return (num_bytes // len(chunk)) * len(chunk) / max(elapsed, 1e-9)
