"""The training loop: data, steps, evaluation, metrics, checkpoints and resumption.

Configured by gin as `train.*` (see gin/runs/pretrain.gin); the CLI is t5x_lite/train.py.
"""

import dataclasses
import math
import os
import signal
import time

import gin
import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow as tf

from t5x_lite import checkpoints, config, flops, partitioning, resume_check, run_lock, run_setup
from t5x_lite import optimizers  # noqa: F401  (registers gin configurables)
from t5x_lite.data import pipeline, tokenized_cache
from t5x_lite.errors import UserError
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
      self._previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, self._handle),
                        signal.SIGINT: signal.signal(signal.SIGINT, self._interrupt)}

  def close(self) -> None:
    """Gives the signals back to whoever had them (e.g. a caller that trains in-process)."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def _handle(self, signum, frame):
    self._flag = True

  def _interrupt(self, signum, frame):
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C aborts at once
    print("Ctrl-C: saving at the next step boundary, then exiting (Ctrl-C again aborts without "
          "saving)", flush=True)
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
      f"or JSON lines without the field jsonl_corpus.text_field names); check the corpus files")


def evaluate(trainer: Trainer, state, eval_dataset, eval_steps: int, task: str = "?") -> dict:
  totals = {"loss_sum": 0.0, "num_correct": 0.0, "num_tokens": 0.0}
  batches = 0
  for batch in eval_dataset.take(eval_steps).as_numpy_iterator():
    out = jax.device_get(trainer.eval_step(state, batch))
    batches += 1
    for k in totals:
      totals[k] += float(out[k])
  if eval_steps > 0 and batches == 0:
    raise _no_data(task, "validation")
  n = max(totals["num_tokens"], 1.0)
  return {"eval_loss": totals["loss_sum"] / n, "eval_accuracy": totals["num_correct"] / n}


def _first_step_seconds(metrics, started: float) -> float:
  """Wall time of the first train step of a process, which is dominated by its compilation."""
  jax.block_until_ready(metrics)
  return time.time() - started


def _write_config(model_dir: str) -> None:
  if jax.process_index() == 0:
    with tf.io.gfile.GFile(os.path.join(model_dir, "config.gin"), "w") as f:
      f.write(gin.operative_config_str())


@gin.configurable(denylist=["stop_at_step"])
def train(model_dir: str | None = None,
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
          stop_at_step: int | None = None) -> dict:
  """Trains until `train_steps`; returns the last train and eval metrics.

  `stop_at_step` (not a gin binding) ends the run early with a checkpoint, as a preemption would.
  `allow_data_change`: resume a checkpoint whose data settings differ (see resume_check.py) with
  the data stream started afresh, instead of refusing.
  `memory_fit`: 'auto' switches to the cheapest remat policy / microbatch count that fits the
  device when the configured step does not; 'off' fails instead (see memory_fit.py).
  """
  if not model_dir:
    raise UserError("MODEL_DIR is not set; pass --gin.MODEL_DIR=\"'/path/to/run'\"")
  if "://" not in model_dir:  # gs:// and other object stores are used as given
    model_dir = os.path.abspath(os.path.expanduser(model_dir))
  for name, value in (("TRAIN_STEPS", train_steps), ("BATCH_SIZE", batch_size),
                      ("CHECKPOINT_PERIOD", checkpoint_period), ("EVAL_PERIOD", eval_period)):
    if not isinstance(value, int) or value < 1:
      raise UserError(f"{name} must be a positive integer, got {value!r}")
  for name, value, low in (("train.log_period", log_period, 1),
                           ("train.num_microbatches", num_microbatches, 1),
                           ("train.eval_steps", eval_steps, 0)):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
  if stop_at_step is not None and stop_at_step < 1:
    raise UserError(f"--stop_at_step must be a positive step, got {stop_at_step}")
  run_setup.prepare_model_dir(model_dir)
  lock = run_lock.RunLock(model_dir) if jax.process_index() == 0 else None
  stale = lock.acquire() if lock else None
  preemption = _Preemption()  # early: a SIGTERM during set-up still ends in a clean save
  try:
    run_setup.send_library_logs_to(model_dir)
    if stale:
      print(f"warning: {stale}", flush=True)
    return _train(model_dir, train_steps, batch_size, mixture_or_task_name, task_feature_lengths,
                  num_partitions, num_microbatches, checkpoint_period, eval_period, eval_steps,
                  log_period, seed, use_packing, peak_flops_per_device, allow_data_change,
                  memory_fit, stop_at_step, preemption)
  finally:
    preemption.close()
    if lock:
      lock.release()


def _train(model_dir, train_steps, batch_size, mixture_or_task_name, task_feature_lengths,
           num_partitions, num_microbatches, checkpoint_period, eval_period, eval_steps,
           log_period, seed, use_packing, peak_flops_per_device, allow_data_change,
           memory_fit, stop_at_step, preemption) -> dict:
  cfg = config.model_config()
  model = EncoderDecoderModel(cfg)
  mesh = partitioning.make_mesh(num_partitions)
  partitioning.check_batch_split(batch_size, mesh, num_microbatches)
  run_setup.check_model_splits(cfg, mesh.shape["model"])
  vocab_size = run_setup.task_vocab_size(mixture_or_task_name)
  if vocab_size > cfg.vocab_size:
    raise UserError(f"task {mixture_or_task_name!r} has {vocab_size} tokens but the model's "
                    f"vocab_size is {cfg.vocab_size}")

  trainer = Trainer(model, mesh, partitioning.logical_axis_rules(), task_feature_lengths,
                    num_microbatches=num_microbatches, loss_config=LossConfig())
  ckpt = checkpoints.Checkpointer(model_dir)
  data = resume_check.data_settings(mixture_or_task_name, task_feature_lengths, batch_size,
                                    use_packing, seed)
  model_meta = dataclasses.asdict(cfg)
  data_reset = []  # the changes that reset the data position, when allowed

  def check_meta(at_step: int, meta: dict) -> None:
    where = os.path.join(ckpt.directory, str(at_step))
    resume_check.check_model(meta.get("model_config"), model_meta, where)
    if not meta.get("batches_consumed"):
      return  # consumed no data (e.g. an imported model): any data starts afresh
    changes = resume_check.data_changes(
        meta, data, resume_check.saved_process_count(ckpt.data_directory, at_step))
    if changes and not allow_data_change:
      raise UserError(
          f"checkpoint {where} was trained on other data settings "
          f"({resume_check.describe(changes)}); its data position does not apply to them: pass "
          f"--gin.train.allow_data_change=True to continue from step {at_step} with the new data "
          f"from its start, or use another MODEL_DIR")
    data_reset[:] = changes

  restored = ckpt.restore(trainer.abstract_state(), check_meta=check_meta)
  writer = MetricsWriter(model_dir)
  writer.drop_rows_after(restored[0] if restored else None)
  trainer = fit_trainer(trainer, memory_fit, batch_size, use_packing, writer.console)
  processes = dict(process_index=jax.process_index(), process_count=jax.process_count())
  train_iter = pipeline.train_iterator(mixture_or_task_name, task_feature_lengths, batch_size,
                                       seed=seed, use_packing=use_packing,
                                       batch_sharding=trainer.batch_sharding, **processes)
  eval_dataset = pipeline.eval_dataset(mixture_or_task_name, task_feature_lengths, batch_size,
                                       seed=seed, use_packing=use_packing, **processes)
  if tokenized_cache.tokenized_cache_config():
    writer.console(f"reading pre-tokenized data from the cache in "
                   f"{tokenized_cache.tokenized_cache_config()}")

  if restored is None:
    state, step = None, 0  # initialised once the data is known to be there
  else:
    step, state, meta = restored
    data_path = ckpt.data_state_path(step)
    if data_reset:
      writer.console(f"data changed ({resume_check.describe(data_reset)}): the data position is "
                     f"reset; training continues from step {step} on the new data")
    elif data_path is not None:
      train_iter.restore(data_path)
    elif meta.get("batches_consumed", 0) != 0:
      raise UserError(f"checkpoint step {step} in {ckpt.directory} has no data position in "
                      f"{ckpt.data_directory}")
    # else: a checkpoint that consumed no data (e.g. from import_hf) starts the stream afresh.
    writer.console(f"resumed from step {step} ({ckpt.directory})")

  flops_per_example = config.train_flops_per_example(
      cfg, task_feature_lengths["inputs"], task_feature_lengths["targets"])
  peak = peak_flops_per_device or flops.peak_flops_per_device()
  tokens_per_step = batch_size * (task_feature_lengths["inputs"] + task_feature_lengths["targets"])
  lr_schedule = optimizers.rsqrt_schedule()

  def save(at_step: int, state) -> None:
    meta = {"step": at_step, "batches_consumed": train_iter.state()["batches"],
            "model_config": model_meta, "gin_config": gin.config_str(),
            "mixture_or_task_name": mixture_or_task_name,
            "task_feature_lengths": dict(task_feature_lengths), "data": data}
    ckpt.save(at_step, state, meta, train_iter.save)

  def next_batch():
    try:
      return next(train_iter)
    except StopIteration:
      raise _no_data(mixture_or_task_name, "train") from None

  # The first batch before anything compiles: an empty corpus is an error within seconds.
  first_batch = next_batch() if step < train_steps else None
  if state is None:
    state = trainer.init_state(seed)
  last_eval = {}
  if step == 0:
    last_eval = {"step": 0, **evaluate(trainer, state, eval_dataset, eval_steps,
                                       mixture_or_task_name)}
    writer.write(last_eval)
    writer.console(f"step {0:>7d} | eval loss {last_eval['eval_loss']:.4f} | "
                   f"eval acc {last_eval['eval_accuracy']:.4f}")

  end_step = min(train_steps, stop_at_step) if stop_at_step else train_steps
  pending: list[tuple[int, dict]] = []
  last_saved = step if restored is not None else None
  last_log_time = started = time.time()
  first_step, last_log_step, last_train = step, step, {}
  config_written = False
  compile_s = None  # this process's first step: compilation, reported apart from step times
  while step < end_step:
    batch = first_batch if first_batch is not None else next_batch()
    first_batch = None
    step_started = time.time()
    state, metrics = trainer.train_step(state, batch)
    step += 1
    pending.append((step, metrics))
    if compile_s is None:
      compile_s = _first_step_seconds(metrics, step_started)
      writer.console(f"compiled the train step in {compile_s:.1f} s (step {step}; not counted "
                     "in step times)")
      if step != end_step:  # the first window (and the ETA) starts after it
        last_log_time = started = time.time()
        last_log_step = first_step = step
    if not config_written:
      _write_config(model_dir)
      config_written = True

    is_last = step == end_step
    do_log = step % log_period == 0 or is_last
    do_eval = step % eval_period == 0 or step == train_steps
    stop_now = preemption.should_stop(step)
    do_save = step % checkpoint_period == 0 or is_last or stop_now
    if do_log or do_eval or do_save:
      bad_step = _first_nonfinite(pending)
      if bad_step is not None:
        ckpt.wait()
        good = f"the last good checkpoint is step {last_saved} in {ckpt.directory}" if last_saved \
            is not None else "no checkpoint was written"
        raise UserError(f"loss is {float(dict(pending)[bad_step]['loss'])} at step {bad_step}; "
                        f"stopping ({good})")
    if do_log:
      host_metrics = jax.device_get(pending[-1][1])
      now = time.time()
      # A window that holds only the compiled step (log_period 1) has no step time of its own.
      step_time = (now - last_log_time) / (step - last_log_step) if step > last_log_step else None
      last_log_time, last_log_step = now, step
      record = {"step": step, "loss": float(host_metrics["loss"]),
                "accuracy": float(host_metrics["accuracy"]),
                "z_loss": float(host_metrics["z_loss"]),
                "learning_rate": float(lr_schedule(step - 1)),
                "grad_norm": float(host_metrics["grad_norm"]),
                "tokens_per_second": tokens_per_step / step_time if step_time else None,
                "step_time_s": step_time, "mfu": None}
      if step_time:
        record["mfu"], peak = flops.utilization(flops_per_example * batch_size / step_time, peak,
                                                jax.device_count(), not peak_flops_per_device)
      if compile_s is not None and not last_train:  # the first logged row of this process
        record["compile_s"] = compile_s
      writer.write(record)
      writer.train_line(record, train_steps, started, first_step)
      last_train = record
    if do_log or do_eval or do_save:
      pending.clear()
    if do_eval:
      last_eval = {"step": step, **evaluate(trainer, state, eval_dataset, eval_steps,
                                            mixture_or_task_name)}
      writer.write(last_eval)
      writer.console(f"step {step:>7d} | eval loss {last_eval['eval_loss']:.4f} | "
                     f"eval acc {last_eval['eval_accuracy']:.4f}")
      last_log_time = time.time()  # keep eval time out of the step time
    if do_save:
      save(step, state)
      last_saved = step
      last_log_time = time.time()  # nor the blocking part of the save
      if stop_now:
        writer.console(f"{preemption.signal_name}: saved step {step}, exiting")
        break
  ckpt.close()
  _write_config(model_dir)
  writer.close()
  return {"step": step, **last_train, **{k: v for k, v in last_eval.items() if k != "step"}}
