"""The training loop: data, steps, evaluation, metrics, checkpoints and resumption.

Configured by gin as `train.*` (see gin/runs/pretrain.gin); the CLI is t5x_lite/train.py.
"""

import collections
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import gin
import jax
from jax.experimental import multihost_utils
import numpy as np

from t5x_lite import (
  checkpoints,
  config,
  decode_eval,
  files,
  finetune_init,
  flops,
  partitioning,
  paths,
  resume_check,
  run_lock,
  run_setup,
  shutdown,
  storage_faults,
)
from t5x_lite.data import batches, logical_shards, quality
from t5x_lite.errors import StorageError, UserError
from t5x_lite.memory_fit import fit_trainer
from t5x_lite.metrics_writer import MetricsWriter
from t5x_lite.models import EncoderDecoderModel
from t5x_lite.trainer import LossConfig, Trainer


class _Preemption:
  """SIGTERM asks for a save at the next step boundary that every process agrees on.

  One process: a Python signal handler sets a flag, for SIGTERM and for a first Ctrl-C (a second
  Ctrl-C aborts without saving). Several processes: JAX's coordination service already catches
  SIGTERM on any of them and picks one safe step for all (`reached_preemption_sync_point`), so no
  process waits in a collective the others skipped; launch/local.sh turns Ctrl-C into SIGTERM.
  """

  def __init__(self):
    self._flag = False
    self.signal_name = "SIGTERM"
    self._multi = jax.process_count() > 1
    self._previous = {}
    if not self._multi:
      self._previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, self._handle),
        signal.SIGINT: signal.signal(signal.SIGINT, self._interrupt),
      }

  def close(self) -> None:
    """Gives the signals back to whoever had them (e.g. a caller that trains in-process)."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def _handle(self, signum, frame):
    self._flag = True

  def _interrupt(self, signum, frame):
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C aborts at once
    print(
      "Ctrl-C: saving at the next step boundary, then exiting (Ctrl-C again aborts without saving)",
      flush=True,
    )
    self.signal_name = "Ctrl-C"
    self._flag = True

  def should_stop(self, step: int) -> bool:
    if self._multi:
      self._flag = self._flag or multihost_utils.reached_preemption_sync_point(step)
    return self._flag


def _first_nonfinite(pending: list[tuple[int, dict]]) -> int | None:
  for step, metrics in pending:
    if not math.isfinite(float(metrics["loss"])):
      return step
  return None


def _no_data(task: str, split: str) -> UserError:
  """An empty corpus (or JSON lines without the text field) ends a repeated dataset at once."""
  return UserError(
    f"the {split} split of task {task!r} yields no batch: its files hold no documents (empty, "
    f"or JSON lines without the field jsonl_corpus.text_field names); check the corpus files"
  )


def _no_eval_data(task: str, shard_count: int) -> UserError:
  """Eval batches stack one part per logical shard, so a shard without documents empties them."""
  if shard_count == 1:
    return _no_data(task, "validation")
  return UserError(
    f"the validation split of task {task!r} yields no batch: its files hold no documents, or "
    f"fewer than the {shard_count} logical data shards (logical_shards.count) that each need one; "
    f"check the corpus files, or lower logical_shards.count (a divisor of BATCH_SIZE)"
  )


def evaluate(
  trainer: Trainer, state, eval_batches, eval_steps: int, task: str = "?", shard_count: int = 1
) -> dict:
  """Loss and accuracy over `eval_steps` batches (batches.eval_batches, or a tf.data.Dataset)."""
  if not hasattr(eval_batches, "start"):  # a tf.data.Dataset: its first eval_steps batches
    from t5x_lite.data import pipeline

    eval_batches = pipeline.EvalBatches(eval_batches, eval_steps)
  totals = {"loss_sum": 0.0, "num_correct": 0.0, "num_tokens": 0.0}
  batches = 0
  for batch in eval_batches:
    out = jax.device_get(trainer.eval_step(state, batch))
    batches += 1
    for k in totals:
      totals[k] += float(out[k])
  if eval_steps > 0 and batches == 0:
    raise _no_eval_data(task, shard_count)
  n = max(totals["num_tokens"], 1.0)
  return {"eval_loss": totals["loss_sum"] / n, "eval_accuracy": totals["num_correct"] / n}


def _write_config(model_dir: str) -> None:
  if jax.process_index() == 0:
    path = os.path.join(model_dir, "config.gin")
    with storage_faults.writing("config.gin", path):
      files.write_text(path, gin.operative_config_str())


@dataclasses.dataclass(frozen=True)
class Settings:
  """The arguments of one `train` call, checked."""

  model_dir: str
  train_steps: int
  batch_size: int
  mixture_or_task_name: str
  task_feature_lengths: dict
  num_partitions: int
  num_microbatches: int
  checkpoint_period: int
  eval_period: int
  eval_steps: int
  log_period: int
  seed: int
  use_packing: bool
  peak_flops_per_device: float | None
  allow_data_change: bool
  memory_fit: str
  stop_at_step: int | None

  @property
  def end_step(self) -> int:
    return min(self.train_steps, self.stop_at_step) if self.stop_at_step else self.train_steps


@gin.configurable(denylist=["stop_at_step"])
def train(
  model_dir: str = gin.REQUIRED,
  train_steps: int = gin.REQUIRED,
  batch_size: int = gin.REQUIRED,
  mixture_or_task_name: str = gin.REQUIRED,
  task_feature_lengths: dict = gin.REQUIRED,
  num_partitions: int = 1,
  num_microbatches: int = 1,
  checkpoint_period: int = 1000,
  eval_period: int = 1000,
  eval_steps: int = 10,
  log_period: int = 10,
  seed: int = 0,
  use_packing: bool = False,
  peak_flops_per_device: float | None = None,
  allow_data_change: bool = False,
  memory_fit: str = "auto",
  stop_at_step: int | None = None,
) -> dict:
  """Trains until `train_steps`; returns the last train and eval metrics.

  `stop_at_step` (not a gin binding) ends the run early with a checkpoint, as a preemption would.
  `allow_data_change`: resume a checkpoint whose data settings differ (see resume_check.py) with
  the data stream started afresh, instead of refusing.
  `memory_fit`: 'auto' switches to the cheapest remat policy / microbatch count that fits the
  device when the configured step does not; 'off' fails instead (see memory_fit.py).
  """
  s = _checked(Settings(**locals()))  # the parameters are Settings' fields, by name
  before = run_setup.prepare_model_dir(s.model_dir)
  lock = run_lock.RunLock(s.model_dir) if jax.process_index() == 0 else None
  stale = lock.acquire() if lock else None
  # A signal before the first step ends the process at once (shutdown.py), leaving MODEL_DIR
  # as a failed start does.
  shutdown.on_startup_exit(before.undo)
  if lock:
    shutdown.on_startup_exit(lock.release)
  preemption = _Preemption()  # early: a SIGTERM during set-up still ends in a clean save
  started = False
  try:
    run_setup.hold_library_logs()
    if stale:
      print(f"warning: {stale}", flush=True)
    run = _setup(s, preemption)
    _restore(run)
    _start(run)
    started = True
    run_setup.send_library_logs_to(s.model_dir)
    return _train_to_end(run)
  finally:
    preemption.close()
    if lock:
      # Storage that failed a write may not let the lock go either: then it is left for the
      # next start on this host to replace (its pid is gone).
      lock.release(quiet=sys.exc_info()[0] is not None)
    if not started:  # a failed start (a bad setting, a refused resume) leaves no trace
      before.undo()


def _train_to_end(run: "_Run") -> dict:
  """The loop and the end of the run; a failed write stops it in one line (StorageError)."""
  try:
    _loop(run)
    return _finish(run)
  except StorageError as e:
    raise _stopped_by_storage(run, e) from None
  finally:
    run.train_iter.close()  # before returning: see DataIterator.close


def _checked(s: Settings) -> Settings:
  if not s.model_dir:  # runs/pretrain.gin binds MODEL_DIR = None (see there)
    raise UserError("MODEL_DIR is not set; pass --gin.MODEL_DIR=\"'/path/to/run'\"")
  for name, value in (
    ("TRAIN_STEPS", s.train_steps),
    ("BATCH_SIZE", s.batch_size),
    ("CHECKPOINT_PERIOD", s.checkpoint_period),
    ("EVAL_PERIOD", s.eval_period),
  ):
    if not isinstance(value, int) or value < 1:
      raise UserError(f"{name} must be a positive integer, got {value!r}")
  for name, value, low in (
    ("train.log_period", s.log_period, 1),
    ("train.num_microbatches", s.num_microbatches, 1),
    ("train.eval_steps", s.eval_steps, 0),
  ):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
  if s.stop_at_step is not None and s.stop_at_step < 1:
    raise UserError(f"--stop_at_step must be a positive step, got {s.stop_at_step}")
  if paths.is_remote(s.model_dir):  # gs:// and other object stores are used as given
    return s
  return dataclasses.replace(s, model_dir=os.path.abspath(os.path.expanduser(s.model_dir)))


@dataclasses.dataclass
class _Run:
  """One training run: its parts (built by `_setup`) and where the loop stands."""

  s: Settings
  preemption: _Preemption
  model_meta: dict  # the model config, stored with every checkpoint
  data: dict  # the data settings a resume is checked against (resume_check.data_settings)
  trainer: Trainer
  ckpt: checkpoints.Checkpointer
  flops_per_example: float
  faults: storage_faults.Faults = dataclasses.field(default_factory=storage_faults.Faults)
  writer: MetricsWriter | None = None  # opened once a checkpoint is accepted (or none is there)
  peak: float | None = None  # FLOP/s per device that MFU is measured against (set in _start)
  train_iter: Any = None  # a StreamIterator or, for seqio-per-shard data, a DataIterator
  eval_batches: Any = None  # batches.eval_batches: the same batches at every evaluation
  decoding: decode_eval.DecodeEval | None = None  # decoding metrics at each evaluation
  restored: tuple | None = None  # (step, state, meta) of the checkpoint resumed from
  data_reset: list = dataclasses.field(default_factory=list)  # changes that reset the data
  # The loop.
  step: int = 0
  state: Any = None
  ahead: tuple | None = None  # (batch on its devices, data position after it), read ahead
  trained_position: Any = None  # the data position after the last batch a step trained on
  data_reported: bool = False  # whether skipped or repaired data was reported yet
  pending: list = dataclasses.field(default_factory=list)  # (step, metrics) not yet checked
  in_flight: collections.deque = dataclasses.field(default_factory=collections.deque)
  last_saved: int | None = None
  last_train: dict = dataclasses.field(default_factory=dict)
  last_eval: dict = dataclasses.field(default_factory=dict)
  compile_s: float | None = None  # this process's compile of the train step, before step 1
  first_step_done: bool = False  # the first step of this process is warm-up, not a step time
  started: float = 0.0  # when the timed part of the run (after the compiled step) began
  first_step: int = 0
  last_log_time: float = 0.0
  last_log_step: int = 0
  config_written: bool = False


def _setup(s: Settings, preemption: _Preemption) -> _Run:
  """The model, mesh, trainer and checkpointer; checks that they fit together."""
  cfg = config.model_config()
  mesh = partitioning.make_mesh(s.num_partitions)
  partitioning.check_batch_split(s.batch_size, mesh, s.num_microbatches)
  run_setup.check_model_splits(cfg, mesh.shape["model"])
  run_setup.check_task_fits_model(s.mixture_or_task_name, cfg.vocab_size)
  trainer = Trainer(
    EncoderDecoderModel(cfg),
    mesh,
    partitioning.logical_axis_rules(),
    s.task_feature_lengths,
    num_microbatches=s.num_microbatches,
    loss_config=LossConfig(),
  )
  lengths = s.task_feature_lengths
  return _Run(
    s=s,
    preemption=preemption,
    model_meta=dataclasses.asdict(cfg),
    data=resume_check.data_settings(
      s.mixture_or_task_name, lengths, s.batch_size, s.use_packing, s.seed, cfg.vocab_size
    ),
    trainer=trainer,
    ckpt=checkpoints.Checkpointer(s.model_dir),
    flops_per_example=config.train_flops_per_example(cfg, lengths["inputs"], lengths["targets"]),
  )


def _check_meta(run: _Run, at_step: int, meta: dict) -> None:
  """Refuses a checkpoint of another model, or of other data unless `allow_data_change`."""
  where = os.path.join(run.ckpt.directory, str(at_step))
  resume_check.check_model(meta.get("model_config"), run.model_meta, where)
  if not meta.get("batches_consumed"):
    return  # consumed no data (e.g. an imported model): any data starts afresh
  changes = resume_check.data_changes(
    meta, run.data, resume_check.saved_process_count(run.ckpt.data_directory, at_step)
  )
  if changes and not run.s.allow_data_change:
    raise UserError(
      f"checkpoint {where} was trained on other data settings "
      f"({resume_check.describe(changes)}); its data position does not apply to them: pass "
      f"--gin.train.allow_data_change=True to continue from step {at_step} with the new data "
      f"from its start, or use another MODEL_DIR"
    )
  run.data_reset[:] = changes


def _restore(run: _Run) -> None:
  """Restores the latest checkpoint, fits the step to the device, then builds the data."""
  run.restored = run.ckpt.restore(
    run.trainer.abstract_state(), check_meta=lambda step, meta: _check_meta(run, step, meta)
  )
  run.writer = MetricsWriter(run.s.model_dir)
  run.writer.drop_rows_after(run.restored[0] if run.restored else None)
  run.trainer = fit_trainer(
    run.trainer, run.s.memory_fit, run.s.batch_size, run.s.use_packing, run.writer.console
  )
  if run.restored is None:  # the directory, absolute: a relative one depends on where one stands
    run.writer.console(f"new run in {run.s.model_dir}")
  _make_data(run)
  if run.restored is None:
    # Fine-tuning: a run without checkpoints of its own starts from its initial model (and its
    # step); otherwise the state is initialised in _start, once the data is known to be there.
    initial = finetune_init.initial_state(
      run.trainer,
      run.model_meta,
      run.s.seed,
      run.s.train_steps,
      run.s.model_dir,
      run.writer.console,
    )
    if initial is not None:
      run.step, run.state = initial
    return
  run.step, run.state, meta = run.restored
  run.last_saved = run.step
  _restore_data_position(run, meta)
  run.writer.console(
    f"resuming {run.s.model_dir} from step {run.step} (checkpoints in {run.ckpt.directory})"
  )


def _make_data(run: _Run) -> None:
  """This process's block of the logical shards of the train stream and of the (repeated)
  validation set: the same global batches whatever the process count (pipeline.py)."""
  s = run.s
  processes = dict(process_index=jax.process_index(), process_count=jax.process_count())
  vocab_size = run.trainer.model.cfg.vocab_size
  run.train_iter = batches.train_iterator(
    s.mixture_or_task_name,
    s.task_feature_lengths,
    s.batch_size,
    seed=s.seed,
    use_packing=s.use_packing,
    batch_sharding=run.trainer.batch_sharding,
    saved_data=_saved_data(run),
    end_step=s.end_step,
    model_vocab_size=vocab_size,
    **processes,
  )
  run.eval_batches = batches.eval_batches(
    s.mixture_or_task_name,
    s.task_feature_lengths,
    s.batch_size,
    s.eval_steps,
    seed=s.seed,
    use_packing=s.use_packing,
    model_vocab_size=vocab_size,
    **processes,
  )
  run.decoding = decode_eval.DecodeEval(
    s.model_dir,
    run.trainer.model.cfg,
    s.mixture_or_task_name,
    s.task_feature_lengths,
    run.writer.console,
  )
  source = batches.describe(s.mixture_or_task_name)
  if source:
    run.writer.console(source)
  _keep_vocabulary(s.model_dir, batches.sentencepiece_path(s.mixture_or_task_name))


def _keep_vocabulary(model_dir: str, sentencepiece_path: str | None) -> None:
  """Ready-made examples ship their SentencePiece model: a copy in MODEL_DIR is what export_hf
  and infer use, with no task (and no TensorFlow) to ask."""
  target = files.path(model_dir) / "spiece.model"
  if sentencepiece_path and jax.process_index() == 0 and not target.exists():
    target.write_bytes(files.path(sentencepiece_path).read_bytes())


def _saved_data(run: _Run) -> str | None:
  """The data position this run continues (its layout decides how the data is read)."""
  if run.restored is None or run.data_reset:
    return None
  return run.ckpt.data_state_path(run.restored[0])


def _restore_data_position(run: _Run, meta: dict) -> None:
  data_path = run.ckpt.data_state_path(run.step)
  if run.data_reset:
    run.writer.console(
      f"data changed ({resume_check.describe(run.data_reset)}): the data "
      f"position is reset; training continues from step {run.step} on the new "
      f"data"
    )
  elif data_path is not None:
    run.train_iter.restore(data_path)
  elif meta.get("batches_consumed", 0) == 0:
    pass  # a checkpoint that consumed no data (e.g. from import_hf) starts the stream afresh
  elif run.s.allow_data_change:
    run.writer.console(
      f"checkpoint step {run.step} has no data position: training continues from step "
      f"{run.step} with the data read from its start"
    )
  else:
    raise UserError(_no_data_position(run))


def _no_data_position(run: _Run) -> str:
  """A step whose data position is gone (data_state/ deleted, or not copied with checkpoints/):
  the ways on, as they work."""
  ckpt_dir = run.ckpt.directory
  steps = run.ckpt.all_steps()
  good = [s for s in steps if s < run.step and run.ckpt.data_state_path(s) is not None]
  if good:
    # Orbax lists only the directories named by a step number: a renamed one is not a step.
    later = [s for s in steps if s > good[-1]]
    aside = (
      f"move step{'s' if len(later) > 1 else ''} {', '.join(map(str, later))} aside (e.g. "
      f"rename {ckpt_dir}/{run.step} to {ckpt_dir}/moved.{run.step}) to resume from step "
      f"{good[-1]}"
    )
  else:
    aside = "use another MODEL_DIR to start afresh"
  return (
    f"checkpoint step {run.step} in {ckpt_dir} has no data position in "
    f"{os.path.join(run.ckpt.data_directory, str(run.step))}; pass "
    f"--gin.train.allow_data_change=True to continue from step {run.step} with the data read "
    f"from its start, or {aside}"
  )


def _fetch(run: _Run) -> tuple:
  """The next batch, placed on its devices, and the data position after it (None where the
  iterator cannot tell it apart from its current one, see _train_step)."""
  try:
    batch = next(run.train_iter)
  except StopIteration:
    raise _no_data(run.s.mixture_or_task_name, "train") from None
  position = run.train_iter.position() if run.train_iter.reads_ahead else None
  return run.trainer.make_global_batch(batch), position


def _start(run: _Run) -> None:
  """The first batch, the initial state and (for a new run) the step-0 evaluation."""
  run.peak = run.s.peak_flops_per_device or flops.peak_flops_per_device()
  # The data pipelines start reading while the state is initialised; the first batch is read
  # before the train step compiles (an empty corpus is an error long before that).
  run.train_iter.start()
  run.eval_batches.start()
  if run.state is None:
    run.state = run.trainer.init_state(run.s.seed)
  if run.step < run.s.train_steps:
    run.ahead = _fetch(run)
  if run.step == 0 or run.restored is None:  # a new run (or fine-tuning run) starts measured
    _evaluate(run)
  if run.ahead is not None:
    _compile(run, run.ahead[0])
  run.last_log_time = run.started = time.time()
  run.first_step = run.last_log_step = run.step


def _compile(run: _Run, batch: dict) -> None:
  """Compiles the train step before the first step, while a signal still ends start-up at once
  (the first step then only runs it). memory_fit's compile, where it made one, is that step's."""
  started = time.time()
  if not run.trainer.has_compiled_step:
    run.trainer.compile_train_step(run.state, batch)
  run.compile_s = time.time() - started
  run.writer.console(
    f"compiled the train step in {run.compile_s:.1f} s (not counted in step times)"
  )


# Dispatched steps the host may be ahead of the devices. Dispatch is asynchronous and, with no
# sync between log points, the loop would queue steps as fast as it reads batches: a SIGTERM, a
# save or a NaN would then be acted on only after every queued step has run (34 steps, 18 min,
# in a CPU run). Waiting for step N-2 after dispatching step N keeps the next step queued, so the
# devices never wait for the host, and nothing is copied to the host.
MAX_STEPS_AHEAD = 2


def _bound_steps_ahead(run: _Run, metrics: dict) -> None:
  run.in_flight.append(metrics["loss"])
  if len(run.in_flight) > MAX_STEPS_AHEAD:
    run.in_flight.popleft().block_until_ready()


def _train_step(run: _Run) -> None:
  """Dispatches one step, then reads the next batch while the devices run it.

  Reading ahead needs a data position that can be saved for the batch trained on rather than
  the one read (StreamIterator); a seqio-per-shard iterator is read when its step is due.
  """
  (batch, run.trained_position), run.ahead = run.ahead or _fetch(run), None
  run.state, metrics = run.trainer.train_step(run.state, batch)
  run.step += 1
  run.pending.append((run.step, metrics))
  if run.train_iter.reads_ahead and run.step < run.s.end_step:
    run.ahead = _fetch(run)
  _bound_steps_ahead(run, metrics)
  if not run.first_step_done:
    run.first_step_done = True
    # Until the first step has finished, a signal still ends the run at once (nothing trained
    # yet: it may take long on a busy host); from now on it saves at the next step (see _loop).
    jax.block_until_ready(metrics)  # the first step warms up too: not a step time
    shutdown.training_started()
    # The first window (and the ETA) starts after it: a window of the first step alone (log
    # period 1, a one-step run) reports no step time or MFU.
    run.last_log_time = run.started = time.time()
    run.last_log_step = run.first_step = run.step
  if not run.config_written:
    # Written once the first step has run rather than at set-up: a resume that fails before
    # training (a bad override, a refused checkpoint) keeps the config.gin that describes the
    # checkpoints already there. (gin lists only the configurables called so far; all are
    # called by now.) It is written again at the end.
    with run.faults.held():
      _write_config(run.s.model_dir)
    run.config_written = True


def _loop(run: _Run) -> None:
  """The steps, each followed by what is due: a log line, an evaluation, a checkpoint, a stop."""
  s = run.s
  while run.step < s.end_step:
    _train_step(run)
    step = run.step
    stop_now = run.preemption.should_stop(step)
    do_log = step % s.log_period == 0 or step == s.end_step or stop_now
    do_eval = step % s.eval_period == 0 or step == s.train_steps
    do_save = step % s.checkpoint_period == 0 or step == s.end_step or stop_now
    if jax.process_count() == 1:
      run.ckpt.check_for_errors()  # a failed background save stops the run at the next step
    if do_log or do_eval or do_save:
      # Each process's writes, and its background saves, are agreed on at this step: a failure
      # on any process stops all of them here, before the save below waits for all of them.
      with run.faults.held():
        run.ckpt.check_for_errors()
        _maybe_log(run, do_log, _check_finite(run))
        _report_data(run, final=False)
        _maybe_eval(run, do_eval)
      run.faults.agree()
    _maybe_save(run, do_save)
    if stop_now:
      with run.faults.held():
        run.ckpt.wait()  # the line below says the step is saved: it is, once this returns
      run.faults.agree()
      run.writer.console(f"{run.preemption.signal_name}: saved step {step}, exiting")
      return


def _finish(run: _Run) -> dict:
  with run.faults.held():
    run.ckpt.close()
    _write_config(run.s.model_dir)
  run.faults.agree()
  _report_data(run, final=True)
  run.writer.close()
  return {
    "step": run.step,
    **run.last_train,
    **{k: v for k, v in run.last_eval.items() if k != "step"},
  }


def _report_data(run: _Run, final: bool) -> None:
  """What the data streams skipped or repaired (quality.py): one console line the first time
  there is any, and at the end of the run the counts of all processes, in metrics.jsonl too.
  Several processes check the skipped-records limit here, on the counts of all of them."""
  if not run.train_iter.reads_ahead or run.trained_position is None:
    return  # seqio-per-shard data is not counted
  counts = run.train_iter.quality_counts(run.trained_position)
  if jax.process_count() > 1:  # the whole split's counts, checked by every process alike
    gathered = multihost_utils.process_allgather(np.array([counts[k] for k in quality.COUNTERS]))
    counts = dict(zip(quality.COUNTERS, (int(x) for x in np.sum(gathered, axis=0))))
    run.train_iter.check_skipped(counts)
  if final:
    run.writer.write({"step": run.step, **{f"data_{k}": v for k, v in counts.items()}})
    if quality.any_reported(counts):
      run.writer.console(f"data: {quality.describe(counts)} (metrics.jsonl: data_*)")
  elif not run.data_reported and quality.any_reported(counts):
    run.data_reported = True
    run.writer.console(
      f"data: {quality.describe(counts)} so far; reading on (data_quality.max_skipped_fraction "
      "sets when skipped records stop the run; totals at the end)"
    )


def _check_finite(run: _Run) -> dict:
  """Stops on a non-finite loss among the steps since the last check; returns the latest metrics.

  Checked only when the loop logs, evaluates or saves, never per step: reading a loss on the host
  waits for its step to finish, and a wait per step would keep the host from queueing the next
  step while the device runs this one. A NaN is found at most log_period steps late, and always
  before a checkpoint could hold it.
  """
  bad_step = _first_nonfinite(run.pending)
  if bad_step is not None:
    run.ckpt.wait()
    good = (
      f"the last good checkpoint is step {run.last_saved} in {run.ckpt.directory}"
      if run.last_saved is not None
      else "no checkpoint was written"
    )
    raise UserError(
      f"loss is {float(dict(run.pending)[bad_step]['loss'])} at step {bad_step}; stopping ({good})"
    )
  latest = run.pending[-1][1]
  run.pending.clear()
  return latest


def _maybe_log(run: _Run, due: bool, metrics: dict) -> None:
  """One metrics row and console line: the latest step's metrics and the window's speed."""
  if not due:
    return
  s, step = run.s, run.step
  host_metrics = jax.device_get(metrics)
  now = time.time()
  # A window that holds only the compiled step (log_period 1) has no step time of its own.
  step_time = (
    (now - run.last_log_time) / (step - run.last_log_step) if step > run.last_log_step else None
  )
  run.last_log_time, run.last_log_step = now, step
  tokens_per_step = s.batch_size * (
    s.task_feature_lengths["inputs"] + s.task_feature_lengths["targets"]
  )
  record = {
    "step": step,
    "loss": float(host_metrics["loss"]),
    "accuracy": float(host_metrics["accuracy"]),
    "z_loss": float(host_metrics["z_loss"]),
    "learning_rate": run.trainer.learning_rate(step - 1),
    "grad_norm": float(host_metrics["grad_norm"]),
    "tokens_per_second": tokens_per_step / step_time if step_time else None,
    "step_time_s": step_time,
    "mfu": None,
  }
  if step_time:
    record["mfu"], run.peak = flops.utilization(
      run.flops_per_example * s.batch_size / step_time,
      run.peak,
      jax.device_count(),
      not s.peak_flops_per_device,
    )
  peak_bytes = _device_peak_bytes()
  if peak_bytes is not None:
    record["device_peak_bytes"] = peak_bytes
  if run.compile_s is not None and not run.last_train:  # the first logged row of this process
    record["compile_s"] = run.compile_s
  run.writer.write(record)
  run.writer.train_line(record, s.train_steps, run.started, run.first_step)
  run.last_train = record


def _device_peak_bytes() -> int | None:
  """The most memory any local device has held so far (GPU, TPU; None where it is not told)."""
  stats = [d.memory_stats() for d in jax.local_devices()]
  peaks = [s.get("peak_bytes_in_use") for s in stats if s]
  return max(peaks) if peaks and None not in peaks else None


def _evaluate(run: _Run) -> None:
  losses = (
    evaluate(
      run.trainer,
      run.state,
      run.eval_batches,
      run.s.eval_steps,
      run.s.mixture_or_task_name,
      logical_shards.make_plan(run.s.batch_size).count,
    )
    if run.s.eval_steps
    else {}
  )
  decoded = run.decoding(run.state.params, run.step)
  if not losses and not decoded:  # evaluation is off (train.eval_steps=0, no decoding)
    return
  run.last_eval = {"step": run.step, **losses, **decoded}
  run.writer.write(run.last_eval)
  if losses:
    run.writer.console(
      f"step {run.step:>7d} | eval loss {losses['eval_loss']:.4f} | "
      f"eval acc {losses['eval_accuracy']:.4f}"
    )


def _maybe_eval(run: _Run, due: bool) -> None:
  if due:
    _evaluate(run)
    run.last_log_time = time.time()  # keep eval time out of the step time


def _maybe_save(run: _Run, due: bool) -> None:
  if not due:
    return
  s = run.s
  position = run.trained_position
  batches = position.batches if position is not None else run.train_iter.state()["batches"]
  meta = {
    "step": run.step,
    "batches_consumed": batches,
    "model_config": run.model_meta,
    "gin_config": gin.config_str(),
    "mixture_or_task_name": s.mixture_or_task_name,
    "task_feature_lengths": dict(s.task_feature_lengths),
    "data": run.data,
  }
  save_data = (
    (lambda directory: run.train_iter.save(directory, position))
    if position is not None
    else run.train_iter.save
  )
  run.ckpt.save(run.step, run.state, meta, save_data, run.faults)
  run.last_saved = run.step
  run.last_log_time = time.time()  # nor the blocking part of the save


def _let_saves_in_flight_end(run: _Run, timeout_s: float = 20.0) -> None:
  """An earlier step's asynchronous save may still complete after another write failed: the line
  names the latest complete step after it (waited for in a daemon thread: bounded, never a hang)."""

  def wait() -> None:
    try:
      run.ckpt.manager.wait_until_finished()
    except Exception:  # noqa: BLE001  (its own failure is reported already, or is the one at hand)
      pass

  waiting = threading.Thread(target=wait, name="saves-in-flight", daemon=True)
  waiting.start()
  waiting.join(timeout_s)


def _stopped_by_storage(run: _Run, error: StorageError) -> StorageError:
  """The one line a failed write ends the run with: the step, MODEL_DIR, what is kept."""
  _let_saves_in_flight_end(run)
  kept = run.ckpt.latest_complete()
  resume = (
    f"checkpoints up to step {kept} are intact; the same command resumes from step {kept}"
    if kept is not None
    else "no checkpoint was completed; the same command starts the run again"
  )
  return StorageError(
    f"stopped at step {run.step}: {error}; MODEL_DIR is {run.s.model_dir}: {resume} once it can "
    f"be written again (free space, fix permissions)"
  )
