"""Resuming never loses a checkpoint nor silently changes what is trained; one run per MODEL_DIR;
metrics.jsonl holds each step once; stopping local.sh saves on every process."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import conftest
from conftest import ONE_DATA_SHARD, TINY_MODEL
import pytest

from t5x_lite import resume_check, run_lock
from t5x_lite.data import testing
from t5x_lite.errors import UserError
import t5x_lite.tasks  # noqa: F401

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = [
  *TINY_MODEL,
  "train.eval_steps = 1",
  "train.log_period = 1",
  "CHECKPOINT_PERIOD = 2",
  "EVAL_PERIOD = 2",
]


@pytest.fixture(scope="module")
def corpus(tiny_corpus):
  return tiny_corpus


def train(corpus, model_dir, steps, *extra):
  return conftest.train_in_process(
    ["runs/quickstart.gin"],
    [
      *TINY,
      ONE_DATA_SHARD,
      *corpus.bindings(),
      f"MODEL_DIR = '{model_dir}'",
      f"TRAIN_STEPS = {steps}",
      *extra,
    ],
  )


@pytest.fixture(scope="module")
def base_run(corpus, tmp_path_factory):
  """Checkpoints at steps 2 and 4."""
  model_dir = tmp_path_factory.mktemp("base") / "run"
  train(corpus, model_dir, 4)
  return model_dir


def copy_of(base_run, tmp_path) -> pathlib.Path:
  return pathlib.Path(shutil.copytree(base_run, tmp_path / "run"))


def checkpoint_files(model_dir: pathlib.Path) -> dict[str, int]:
  return {
    str(p.relative_to(model_dir)): p.stat().st_size
    for sub in ("checkpoints", "data_state")
    for p in (model_dir / sub).rglob("*")
    if p.is_file()
  }


def metrics_steps(model_dir) -> tuple[list[int], list[int]]:
  rows = [json.loads(line) for line in open(model_dir / "metrics.jsonl")]
  return [r["step"] for r in rows if "loss" in r], [r["step"] for r in rows if "eval_loss" in r]


def test_changed_model_is_refused_and_nothing_moves(base_run, corpus, tmp_path):
  model_dir = copy_of(base_run, tmp_path)
  before = checkpoint_files(model_dir)
  with pytest.raises(
    UserError,
    match=r"checkpoints/4 was trained with "
    r"model_config.num_encoder_layers=2, this run has 3; .*another MODEL_DIR",
  ):
    train(corpus, model_dir, 6, "model_config.num_encoder_layers = 3")
  assert checkpoint_files(model_dir) == before
  assert not (model_dir / run_lock.LOCK_NAME).exists()  # released on the error


@pytest.mark.parametrize(
  "binding, change",
  [
    ("span_corruption_config.noise_density = 0.3", "noise_density 0.15 -> 0.3"),
    ("BATCH_SIZE = 16", "batch_size 8 -> 16"),
    ("TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 8}", "task_feature_lengths.inputs 32 -> 16"),
    ("train.use_packing = True", "use_packing False -> True"),
    ("OTHER_VOCAB", "vocabulary"),
    ("OTHER_FILES", "locations.text_corpus.train_files"),
  ],
)
def test_changed_data_is_refused_and_nothing_moves(base_run, corpus, tmp_path, binding, change):
  model_dir = copy_of(base_run, tmp_path)
  if binding == "OTHER_VOCAB":
    binding = f"task_vocabulary.path = '{testing.train_tiny_vocab(tmp_path, vocab_size=90)}'"
  elif binding == "OTHER_FILES":
    other = testing.write_text_shards(tmp_path, "other", testing.make_documents(50, seed=9), 1)
    binding = f"text_corpus.train_files = '{other}'"
  before = checkpoint_files(model_dir)
  with pytest.raises(
    UserError,
    match=rf"checkpoints/4 was trained on other data settings "
    rf"\(.*{change}.*\);.*--gin.train.allow_data_change=True",
  ):
    train(corpus, model_dir, 6, binding)
  assert checkpoint_files(model_dir) == before


def test_allowed_data_change_resets_the_position_and_says_so(base_run, corpus, tmp_path, capsys):
  model_dir = copy_of(base_run, tmp_path)
  result = train(
    corpus,
    model_dir,
    6,
    "span_corruption_config.noise_density = 0.3",
    "train.allow_data_change = True",
  )
  out = capsys.readouterr().out
  assert (
    "data changed (noise_density 0.15 -> 0.3): the data position is reset; training "
    "continues from step 4 on the new data"
  ) in out
  assert result["step"] == 6
  meta = json.loads((model_dir / "checkpoints" / "6" / "meta" / "metadata").read_text())
  assert meta["data"]["noise_density"] == 0.3 and meta["batches_consumed"] == 2
  # The next resume compares with the new settings: no flag needed any more.
  assert train(corpus, model_dir, 8, "span_corruption_config.noise_density = 0.3")["step"] == 8


def test_checkpoint_without_data_settings_is_checked_on_what_it_has(base_run, corpus, tmp_path):
  model_dir = copy_of(base_run, tmp_path)
  meta_path = model_dir / "checkpoints" / "4" / "meta" / "metadata"
  meta = json.loads(meta_path.read_text())
  del meta["data"]  # as written before data settings were stored
  meta_path.write_text(json.dumps(meta))
  with pytest.raises(UserError, match=r"task_feature_lengths.inputs 32 -> 16"):
    train(corpus, model_dir, 6, "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 8}")
  assert train(corpus, model_dir, 6)["step"] == 6


def listing(model_dir: pathlib.Path) -> dict[str, int]:
  return {str(p.relative_to(model_dir)): p.stat().st_size for p in model_dir.rglob("*")}


def test_a_step_without_its_data_position_names_the_ways_on(base_run, corpus, tmp_path, capsys):
  model_dir = copy_of(base_run, tmp_path)
  shutil.rmtree(model_dir / "data_state" / "4")
  before = listing(model_dir)
  ckpt = model_dir / "checkpoints"
  with pytest.raises(UserError) as refused:
    train(corpus, model_dir, 6)
  assert str(refused.value).splitlines()[0] == (  # gin adds a line naming the configurable
    f"checkpoint step 4 in {ckpt} has no data position in {model_dir}/data_state/4; pass "
    f"--gin.train.allow_data_change=True to continue from step 4 with the data read from its "
    f"start, or move step 4 aside (e.g. rename {ckpt}/4 to {ckpt}/moved.4) to resume from step 2"
  )
  assert listing(model_dir) == before
  # Both ways work as said: the flag ...
  other = pathlib.Path(shutil.copytree(model_dir, tmp_path / "other"))
  assert train(corpus, other, 6, "train.allow_data_change = True")["step"] == 6
  assert (
    "checkpoint step 4 has no data position: training continues from step 4 with the data read "
    "from its start" in capsys.readouterr().out
  )
  # ... and the step moved aside.
  (ckpt / "4").rename(ckpt / "moved.4")
  assert train(corpus, model_dir, 6)["step"] == 6
  assert f"resuming {model_dir} from step 2 (checkpoints in {ckpt})" in capsys.readouterr().out


def test_replayed_steps_appear_once_in_metrics(base_run, corpus, tmp_path):
  """A run that logged steps 5 and 6 and died before saving them: the resume from step 4 trains
  them again, and metrics.jsonl keeps only the new rows (and drops a line cut short)."""
  model_dir = copy_of(base_run, tmp_path)
  with open(model_dir / "metrics.jsonl", "a") as f:
    f.write(
      '{"step": 5, "loss": 9.0, "accuracy": 0}\n{"step": 6, "loss": 9.0, "accuracy": 0}\n'
      '{"step": 6, "eval_loss": 9.0, "eval_acc'
    )
  train(corpus, model_dir, 6)
  train_steps, eval_steps = metrics_steps(model_dir)
  assert train_steps == [1, 2, 3, 4, 5, 6] and eval_steps == [0, 2, 4, 6]
  assert all(
    json.loads(line)["loss"] != 9.0
    for line in open(model_dir / "metrics.jsonl")
    if '"loss"' in line
  )


# -- the MODEL_DIR lock ----------------------------------------------------------------------------


def write_lock(model_dir, host, pid):
  (model_dir / run_lock.LOCK_NAME).write_text(
    json.dumps({"host": host, "pid": pid, "started": "2026-01-01T00:00:00+00:00"})
  )


def test_a_running_run_locks_its_model_dir(base_run, corpus, tmp_path):
  model_dir = copy_of(base_run, tmp_path)
  write_lock(model_dir, socket.gethostname(), os.getpid())  # this test process: alive
  before = checkpoint_files(model_dir)
  with pytest.raises(
    UserError,
    match=rf"another training run \(pid {os.getpid()} on host "
    rf".*\) is using {model_dir}; stop it first",
  ):
    train(corpus, model_dir, 6)
  write_lock(model_dir, "another-host", 1)
  with pytest.raises(
    UserError,
    match=rf"locked by another training run \(pid 1 on host "
    rf"another-host.*remove the lock with `rm {model_dir}/RUN_LOCK`",
  ):
    train(corpus, model_dir, 6)
  assert checkpoint_files(model_dir) == before


def test_a_stale_lock_is_replaced(base_run, corpus, tmp_path, capsys):
  model_dir = copy_of(base_run, tmp_path)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  write_lock(model_dir, socket.gethostname(), dead.pid)
  assert train(corpus, model_dir, 4)["step"] == 4  # nothing to train: set-up and exit
  assert f"removed a stale lock {model_dir}/RUN_LOCK (pid {dead.pid}" in capsys.readouterr().out
  assert not (model_dir / run_lock.LOCK_NAME).exists()


# -- stopping local.sh -----------------------------------------------------------------------------

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def start_local_sh(corpus, model_dir, *extra_flags) -> subprocess.Popen:
  """launch/local.sh with two real CPU processes training the tiny model on the corpus."""
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    CUDA_VISIBLE_DEVICES="",
    XLA_FLAGS=FAST_COMPILE,
    PYTHON=sys.executable,
    DEVICES_PER_PROCESS="2",
  )
  flags = [
    "--gin_file=runs/quickstart.gin",
    *[f"--gin_bindings={b}" for b in TINY],
    f"--gin.MODEL_DIR='{model_dir}'",
    "--gin.MIXTURE_OR_TASK_NAME='text_span_corruption'",
    *corpus.flags(),
    *extra_flags,
  ]
  return subprocess.Popen(
    ["bash", str(REPO / "launch" / "local.sh"), "2", *flags],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )


@pytest.mark.slow
def test_sigterm_to_local_sh_saves_on_every_process(corpus, tmp_path):
  """Two real processes: SIGTERM to the launcher reaches both, they save one step, exit 0."""
  model_dir = tmp_path / "run"
  proc = start_local_sh(
    corpus,
    model_dir,
    "--gin.TRAIN_STEPS=100000",
    "--gin.CHECKPOINT_PERIOD=100000",
    "--gin.EVAL_PERIOD=100000",
  )
  try:
    deadline = time.monotonic() + 400
    metrics = model_dir / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count('"loss"') >= 2):
      assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
      time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 0, out[-2000:] + err[-2000:]
  assert "SIGTERM: saved step" in out and "all processes stopped cleanly" in err
  steps = [s for s in os.listdir(model_dir / "checkpoints") if s.isdigit()]
  assert len(steps) == 1
  # One data position per logical shard (default count: gcd(BATCH_SIZE, 64)), from both processes.
  assert sorted(os.listdir(model_dir / "data_state" / steps[0])) == [f"shard_{j}" for j in range(8)]
  assert "still running after" not in err  # no process needed SIGKILL


@pytest.mark.slow
@pytest.mark.ci
def test_sigterm_to_local_sh_during_start_up_ends_every_process(corpus, tmp_path):
  """Two real processes still starting (nothing trained): both exit at once, and so does the
  launcher, with status 0."""
  model_dir = tmp_path / "run"
  proc = start_local_sh(corpus, model_dir)
  try:
    deadline = time.monotonic() + 300
    while not (model_dir / run_lock.LOCK_NAME).exists():
      assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert time.monotonic() - signalled < 30
  assert proc.returncode == 0, out[-2000:] + err[-2000:]
  assert "all processes stopped cleanly" in err
  for i in range(2):
    log = (model_dir / "logs" / f"process_{i}.log").read_text()
    assert "SIGTERM during start-up: no step trained yet" in log
  assert not (model_dir / run_lock.LOCK_NAME).exists()


def test_a_per_process_data_position_of_an_old_checkpoint_is_a_data_change():
  """Old metas lack the layout; per-process data positions on disk show it (not resumable)."""
  new = {
    "mixture_or_task_name": "t",
    "task_feature_lengths": {"inputs": 32, "targets": 8},
    "logical_shards": 8,
    "batch_size": 8,
    "noise_density": 0.15,
  }
  old_meta = {"mixture_or_task_name": "t", "task_feature_lengths": {"inputs": 32, "targets": 8}}
  assert resume_check.data_changes(old_meta, new, saved_process_count=2) == [
    resume_check.PER_PROCESS_POSITION
  ]
  assert resume_check.data_changes(old_meta, new, saved_process_count=None) == []
  assert resume_check.data_changes({"data": dict(new, logical_shards=4)}, new, None) == [
    "logical_shards 4 -> 8"
  ]


# What configs written before the seqio tasks moved into the package (and before the loss
# normaliser took T5X's names and make_mesh stopped being configurable) may hold.
EARLIER_VERSION_LINES = [
  "from tasks import quickstart",
  "tasks.quickstart.quickstart_corpus.cache_dir = None",
  "partitioning.make_mesh.devices = None",
  "LossConfig.loss_normalizing_factor = 'num_real_target_tokens'",
]


def test_a_run_of_an_earlier_version_exports_and_resumes(corpus, base_run, tmp_path):
  from t5x_lite import export_hf

  model_dir = copy_of(base_run, tmp_path)
  meta_file = model_dir / "checkpoints" / "4" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  meta["gin_config"] = "\n".join([*EARLIER_VERSION_LINES, meta["gin_config"]])
  meta_file.write_text(json.dumps(meta))
  config_gin = model_dir / "config.gin"
  config_gin.write_text("\n".join([*EARLIER_VERSION_LINES, config_gin.read_text()]))

  # Export finds the task's vocabulary through the stored config.
  exported = export_hf.export(str(model_dir), str(tmp_path / "hf"), log=lambda line: None)
  assert exported["step"] == 4 and exported["tokenizer"]
  # The run's config.gin, given back to training, resumes it.
  result = conftest.train_in_process(
    [str(config_gin)], [f"MODEL_DIR = '{model_dir}'", "TRAIN_STEPS = 6"]
  )
  assert result["step"] == 6
  assert metrics_steps(model_dir)[0][-1] == 6


def test_every_start_prints_the_absolute_model_dir(corpus, base_run, tmp_path, monkeypatch, capsys):
  """A relative MODEL_DIR names a directory under the working directory: each start says which,
  so a run started from another directory is seen to be a new one."""
  shutil.copytree(base_run, tmp_path / "here" / "run")
  (tmp_path / "elsewhere").mkdir()
  monkeypatch.chdir(tmp_path / "here")
  train(corpus, "run", 5)
  assert f"resuming {tmp_path / 'here' / 'run'} from step 4 (checkpoints in " in (
    capsys.readouterr().out
  )
  monkeypatch.chdir(tmp_path / "elsewhere")
  train(corpus, "run", 1)
  assert f"new run in {tmp_path / 'elsewhere' / 'run'}\n" in capsys.readouterr().out
