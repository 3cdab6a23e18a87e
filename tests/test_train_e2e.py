"""The train command end to end on a tiny local corpus: metrics, eval, resume, errors."""

import json
import os
import signal
import subprocess
import sys
import time

import conftest
from conftest import ONE_DATA_SHARD, TINY_MODEL
import jax
import numpy as np
import pytest

from t5x_lite import hf_files, run_lock
from t5x_lite.errors import UserError
import t5x_lite.tasks  # noqa: F401

TINY = [*TINY_MODEL, ONE_DATA_SHARD, "train.eval_steps = 2", "train.log_period = 2"]
GIN_FILES = ["runs/quickstart.gin"]


@pytest.fixture(scope="module")
def corpus(tiny_corpus):
  return tiny_corpus.bindings()


def bindings(corpus, model_dir, steps, period, extra=()):
  return [
    *TINY,
    *corpus,
    f"MODEL_DIR = '{model_dir}'",
    f"TRAIN_STEPS = {steps}",
    f"CHECKPOINT_PERIOD = {period}",
    f"EVAL_PERIOD = {period}",
    *extra,
  ]


def train_in_process(corpus, model_dir, steps, period=2, stop_at_step=None, extra=()):
  return conftest.train_in_process(
    GIN_FILES, bindings(corpus, model_dir, steps, period, extra), stop_at_step
  )


def train_command(corpus, model_dir, steps, period=2, extra=()):
  cmd = [sys.executable, "-m", "t5x_lite.train"]
  cmd += [f"--gin_file={f}" for f in GIN_FILES]
  cmd += [f"--gin_bindings={b}" for b in bindings(corpus, model_dir, steps, period, extra)]
  return cmd


def final_params(model_dir):
  return jax.device_get(hf_files.restore_params(str(model_dir)).params)


def assert_bit_identical(a, b):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def reference_run(corpus, tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("reference")
  result = train_in_process(corpus, model_dir, steps=8, period=4)
  return model_dir, result


def test_metrics_config_and_eval(reference_run):
  model_dir, result = reference_run
  records = [json.loads(l) for l in open(model_dir / "metrics.jsonl")]
  train_records = [r for r in records if "loss" in r]
  eval_records = [r for r in records if "eval_loss" in r]
  for key in (
    "step",
    "loss",
    "accuracy",
    "learning_rate",
    "tokens_per_second",
    "step_time_s",
    "mfu",
    "grad_norm",
  ):
    assert key in train_records[0], key
  assert [r["step"] for r in eval_records] == [0, 4, 8]
  assert eval_records[-1]["eval_loss"] < eval_records[0]["eval_loss"]  # it learns
  assert all(np.isfinite(r["loss"]) for r in train_records)
  # The rate the optimizer applies (runs/quickstart.gin: rsqrt schedule, 1000 warmup steps).
  assert [r["learning_rate"] for r in train_records] == pytest.approx(
    [1000**-0.5] * len(train_records)
  )
  assert result["step"] == 8
  config = (model_dir / "config.gin").read_text()
  assert "BATCH_SIZE = 8" in config and "train.batch_size = %BATCH_SIZE" in config
  assert "adafactor.decay_rate = 0.8" in config
  assert sorted(os.listdir(model_dir / "checkpoints"))[-1] == "8"
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(model_dir / "tensorboard"))


def test_stop_and_resume_is_bit_identical(corpus, reference_run, tmp_path):
  ref_dir, _ = reference_run
  train_in_process(corpus, tmp_path, steps=8, period=4, stop_at_step=4)
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [4]
  result = train_in_process(corpus, tmp_path, steps=8, period=4)
  assert result["step"] == 8
  assert_bit_identical(final_params(tmp_path), final_params(ref_dir))


def test_sigkill_then_restart_is_bit_identical(corpus, reference_run, tmp_path, capsys):
  ref_dir, _ = reference_run
  cmd = train_command(corpus, tmp_path, steps=8, period=4)
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 180
  try:
    while not (tmp_path / "checkpoints" / "4").is_dir():
      assert proc.poll() is None and time.time() < deadline, "no checkpoint at step 4"
      time.sleep(0.2)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  # The restart in this process: the command's own start-up is tested by the run killed above.
  result = train_in_process(corpus, tmp_path, steps=8, period=4)
  assert result["step"] == 8
  assert f"resuming {tmp_path} from step" in capsys.readouterr().out
  assert_bit_identical(final_params(tmp_path), final_params(ref_dir))


@pytest.mark.parametrize(
  "signum,said",
  [
    (signal.SIGTERM, "SIGTERM"),
    # The same save-and-exit path behind its own handler: run by CI after the default suite.
    pytest.param(signal.SIGINT, "Ctrl-C", marks=[pytest.mark.slow, pytest.mark.ci]),
  ],
)
def test_sigterm_or_ctrl_c_saves_and_exits_cleanly(corpus, tmp_path, signum, said):
  # Rows every 5 steps: the step saved on the signal is seldom one of them.
  cmd = train_command(corpus, tmp_path, steps=10_000, period=10_000, extra=["train.log_period = 5"])
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  deadline = time.time() + 180
  while (
    not (tmp_path / "metrics.jsonl").exists()
    or '"accuracy"' not in (tmp_path / "metrics.jsonl").read_text()
  ):
    assert proc.poll() is None and time.time() < deadline, "training did not start"
    time.sleep(0.2)
  proc.send_signal(signum)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0
  saved = [s for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
  assert len(saved) == 1
  assert f"{said}: saved step {saved[0]}, exiting" in out
  # The summary, the last console line and metrics row name the step saved, not an earlier one.
  assert json.loads(out.splitlines()[-1])["final"]["step"] == int(saved[0])
  assert f"step {int(saved[0]):>7d}/10000 | loss" in out
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  last_train_row = [r for r in rows if "loss" in r][-1]
  assert last_train_row["step"] == int(saved[0])
  # After it, the run's data counters (the stream's records read, nothing skipped here).
  assert rows[-1]["step"] == int(saved[0]) and rows[-1]["data_malformed"] == 0


@pytest.mark.parametrize(
  "signum,said",
  [
    (signal.SIGTERM, "SIGTERM"),
    pytest.param(signal.SIGINT, "Ctrl-C", marks=[pytest.mark.slow, pytest.mark.ci]),
  ],
)
def test_a_signal_during_start_up_ends_the_command_at_once(
  corpus, reference_run, tmp_path, signum, said
):
  cmd = train_command(corpus, tmp_path, steps=8, period=4)
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  deadline = time.time() + 180
  # The run lock is taken before data, pipelines, compilation and the step-0 evaluation.
  while not (tmp_path / run_lock.LOCK_NAME).exists():
    assert proc.poll() is None and time.time() < deadline, "the run did not start"
    time.sleep(0.05)
  proc.send_signal(signum)
  signalled = time.time()
  out, _ = proc.communicate(timeout=120)
  assert time.time() - signalled < 10
  assert proc.returncode == 0
  assert f"{said} during start-up: no step trained yet, nothing to save; exiting" in out
  assert not (tmp_path / run_lock.LOCK_NAME).exists()
  checkpoints = tmp_path / "checkpoints"
  assert not checkpoints.exists() or not [s for s in os.listdir(checkpoints) if s.isdigit()]
  # Nothing was left that a new run would trip over: the same command trains as if fresh.
  train_in_process(corpus, tmp_path, steps=8, period=4)
  assert_bit_identical(final_params(tmp_path), final_params(reference_run[0]))


def test_nan_loss_stops_with_step_and_keeps_checkpoint(corpus, tmp_path):
  # A learning rate of 1e30 blows the parameters up within a few steps.
  with pytest.raises(
    UserError, match=r"at step \d+; stopping \(the last good checkpoint is step 2"
  ):
    train_in_process(
      corpus,
      tmp_path,
      steps=40,
      period=2,
      extra=[
        "optimizers.rsqrt_schedule.base_learning_rate = 1e30",
        "optimizers.adafactor.clipping_threshold = None",
        "optimizers.adafactor.multiply_by_parameter_scale = False",
      ],
    )


def run_cli(args):
  return subprocess.run(
    [sys.executable, "-m", "t5x_lite.train", *args], capture_output=True, text=True, timeout=300
  )


@pytest.mark.parametrize(
  "args, message",
  [
    (["--gin_file=runs/nope.gin"], "gin file 'runs/nope.gin' not found; searched"),
    (["--gin_file=runs/quickstart.gin", "--gin.train.no_such_flag=1"], "no_such_flag"),
    (
      [
        "--gin_file=runs/quickstart.gin",
        "--gin.MODEL_DIR='/tmp/x'",
        "--gin.BATCH_SIZE=7",
        "--gin.model_config.name='t5-efficient-tiny'",
      ],
      "BATCH_SIZE=7 is not divisible by the data-parallel size 8",
    ),
  ],
)
def test_user_errors_are_one_line(args, message):
  out = run_cli(args)
  assert out.returncode != 0
  lines = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and message in lines[0], out.stderr[-2000:]
  assert "Traceback" not in out.stderr


def test_one_step_without_evaluation_reports_no_eval_and_no_step_time(corpus, tmp_path, capsys):
  """Evaluation off (train.eval_steps=0): no eval line, no eval row. One step: it holds the
  compile, so it has no step time or MFU of its own."""
  train_in_process(corpus, tmp_path, steps=1, period=1, extra=["train.eval_steps = 0"])
  out = capsys.readouterr().out
  assert "eval loss" not in out
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert not [r for r in records if any(k.startswith("eval_") for k in r)]
  (row,) = [r for r in records if "loss" in r]
  assert row["step"] == 1 and row["compile_s"] > 0
  assert row["step_time_s"] is None and row["mfu"] is None and row["tokens_per_second"] is None
  (line,) = [l for l in out.splitlines() if l.startswith("step ")]
  assert "compiled step, not timed | MFU n/a | ETA 0m00s" in line and "ms/step" not in line
