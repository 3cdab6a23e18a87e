"""Truly multi-process training on one machine (launch/local.sh, gloo), its failures, and the
launch scripts' syntax.

The expensive tests (slow) train 2 processes x 2 CPU devices and 1 process x 4 devices on the same
gin and compare them directly: the rows of every step (row digests) and the final parameters,
uninterrupted and across a resume on the other process count.
"""

import collections
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from t5x_lite import distributed
from t5x_lite.data import testing
from t5x_lite.errors import UserError

REPO = pathlib.Path(__file__).resolve().parent.parent
LOCAL_SH = REPO / "launch" / "local.sh"
LAUNCH_SCRIPTS = sorted(p for p in (REPO / "launch").iterdir() if p.suffix in (".sh", ".sbatch"))
TIMEOUT_S = 420  # per subprocess: generous for a loaded 2-core CI machine, never a hang

# 12 steps, saved at 6. The 2-process and 1-process parameters differ only by float32 summation
# order (gloo's ring all-reduce vs the in-process one), orders of magnitude below what one wrong
# row or resume position gives (~1e-2 relative).
STEPS, STOP = 12, 6
RTOL = 1e-5  # relative, per tensor: |a - b| / |b|


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("mp_corpus")
  docs = testing.make_documents(160, seed=1, max_words=60)
  return {
    "train": testing.write_text_shards(root, "train", docs[:140], num_shards=4),
    "validation": testing.write_text_shards(root, "validation", docs[140:], num_shards=1),
    "vocab": testing.train_tiny_vocab(root),
  }


def train_flags(corpus, model_dir, *extra) -> list[str]:
  return [
    "--gin_file=models/quickstart_tiny.gin",
    "--gin_file=runs/quickstart.gin",
    f"--gin.MODEL_DIR='{model_dir}'",
    "--gin.MIXTURE_OR_TASK_NAME='text_span_corruption'",
    f"--gin.text_corpus.train_files='{corpus['train']}'",
    f"--gin.text_corpus.validation_files='{corpus['validation']}'",
    f"--gin.task_vocabulary.path='{corpus['vocab']}'",
    "--gin.model_config.name='t5-efficient-tiny-dm64-ff128-nh2-kv32-nl2'",
    "--gin.model_config.vocab_size=256",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
    "--gin.BATCH_SIZE=8",
    f"--gin.TRAIN_STEPS={STEPS}",
    f"--gin.CHECKPOINT_PERIOD={STOP}",
    "--gin.EVAL_PERIOD=1000",
    "--gin.train.eval_steps=1",
    *extra,
  ]


# Compile time dominates these runs: skip LLVM's optimisations (a tiny model runs fast anyway).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def child_env(tmp_path, **extra) -> dict:
  env = dict(os.environ)
  env.update(
    JAX_PLATFORMS="cpu",
    CUDA_VISIBLE_DEVICES="",
    TF_CPP_MIN_LOG_LEVEL="2",
    XLA_FLAGS=FAST_COMPILE,  # local.sh appends the device count
    PYTHON=sys.executable,
    KILL_GRACE_S="5",
    # The resume compiles the same programs again: share them through jax's disk cache.
    JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
  )
  env.update(extra)
  return env


def run(cmd, env, timeout=TIMEOUT_S) -> subprocess.CompletedProcess:
  """Runs in its own session so that a timeout can stop everything it started."""
  proc = subprocess.Popen(
    [str(c) for c in cmd],
    env=env,
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    pytest.fail(f"{cmd[:2]} did not finish in {timeout}s:\n{out[-3000:]}\n{err[-3000:]}")
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# -- (a) the data order and the resume position do not depend on the process count -------------


def run_training(corpus, tmp_path, model_dir, processes: int, *extra):
  """`launch/local.sh 2` (2 processes x 2 devices), or one process with 4 devices."""
  flags = train_flags(corpus, model_dir, f"--gin.row_digests.directory='{model_dir}/rows'", *extra)
  if processes == 2:
    done = run([LOCAL_SH, 2, *flags], child_env(tmp_path, DEVICES_PER_PROCESS="2"))
  else:
    done = run(
      [sys.executable, "-m", "t5x_lite.train", *flags],
      child_env(tmp_path, XLA_FLAGS=f"{FAST_COMPILE} --xla_force_host_platform_device_count=4"),
    )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  return done


def global_rows(model_dir) -> dict[int, list[str]]:
  """{batch: the sha256 of each row of the global batch}, from every process's row digests."""
  rows = collections.defaultdict(dict)
  for path in (model_dir / "rows").glob("process_*.jsonl"):
    for line in path.read_text().splitlines():
      record = json.loads(line)
      for i, digest in enumerate(record["sha256"]):
        rows[record["batch"]][record["first_row"] + i] = digest
  return {b: [r[i] for i in range(len(r))] for b, r in sorted(rows.items())}


def assert_params_close(a_dir, b_dir) -> float:
  import jax

  from t5x_lite import hf_files

  a, b = hf_files.restore_params(str(a_dir)), hf_files.restore_params(str(b_dir))
  assert a.step == b.step == STEPS
  flat_a = jax.tree_util.tree_leaves_with_path(a.params)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(b.params))
  assert len(flat_a) == len(flat_b)
  worst = 0.0
  for path, x in flat_a:
    x, y = np.asarray(x, np.float64), np.asarray(flat_b[path], np.float64)
    relative = float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30))
    assert relative <= RTOL, f"{jax.tree_util.keystr(path)}: relative difference {relative:.2e}"
    worst = max(worst, relative)
  return worst


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
  """{processes: model_dir} of 12-step runs on 2 x 2 and 1 x 4 devices."""
  root = tmp_path_factory.mktemp("uninterrupted")
  dirs = {n: root / f"p{n}" for n in (2, 1)}
  for n, model_dir in dirs.items():
    run_training(corpus, root, model_dir, n)
  return dirs


@pytest.mark.slow  # two real trainings of 12 steps: about 2-4 minutes on 2 cores
def test_two_processes_train_on_the_same_rows_as_one(uninterrupted):
  two, one = uninterrupted[2], uninterrupted[1]
  assert (two / "logs" / "process_1.log").read_text().strip()
  for i in range(2):  # the console (process 0's log is a copy of it) shows only our lines
    assert "[Gloo]" not in (two / "logs" / f"process_{i}.log").read_text()
  rows_two, rows_one = global_rows(two), global_rows(one)
  assert sorted(rows_one) == list(range(STEPS))
  assert all(len(r) == 8 for r in rows_one.values())
  assert rows_two == rows_one  # every step's global batch, row for row
  worst = assert_params_close(two, one)
  print(f"2x2 processes vs 1x4 after {STEPS} steps: worst relative param difference {worst:.1e}")


@pytest.mark.slow  # two real trainings each (stop, resume on the other count): about 3-5 minutes
@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_resume_on_another_process_count_continues_exactly(
  corpus, tmp_path, uninterrupted, first, then
):
  model_dir = tmp_path / "run"
  run_training(corpus, tmp_path, model_dir, first, f"--stop_at_step={STOP}")
  assert sorted(os.listdir(model_dir / "data_state" / str(STOP))) == [
    f"shard_{j}" for j in range(8)
  ]  # logical_shards.count: gcd(BATCH_SIZE=8, 64)
  resumed = run_training(corpus, tmp_path, model_dir, then)
  assert f" from step {STOP} (checkpoints in " in resumed.stdout
  assert global_rows(model_dir) == global_rows(uninterrupted[then])
  assert_params_close(model_dir, uninterrupted[then])


GLOO_CHILD = """
import os, sys
from t5x_lite import quiet_startup
import jax
from jax.experimental import multihost_utils
import numpy as np

process = int(sys.argv[1])
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{sys.argv[2]}", num_processes=2, process_id=process)
quiet_startup.drop_gloo_lines()
print("before", flush=True)
print("gathered", multihost_utils.process_allgather(np.array([process])).tolist(), flush=True)
sys.stdout.write("last line, then os._exit\\n")
sys.stdout.flush()
os._exit(0)
"""


def test_gloo_lines_are_kept_off_stdout_and_none_of_ours_is_lost(tmp_path):
  """Gloo prints "[Gloo] Rank 0 is connected to 1 peer ranks ..." to stdout from C++ at the first
  collective; the train command drops those lines (quiet_startup.drop_gloo_lines) and every line
  of its own still arrives, in order, whatever way the process ends."""
  port = closed_port()
  env = child_env(tmp_path, XLA_FLAGS="")
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", GLOO_CHILD, str(i), str(port)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  try:
    outs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    assert out.splitlines() == ["before", "gathered [[0], [1]]", "last line, then os._exit"]
    assert "[Gloo]" not in err


def test_a_process_count_the_shards_cannot_serve_is_one_line(corpus, tmp_path):
  done = run(
    [LOCAL_SH, 2, *train_flags(corpus, tmp_path / "run"), "--gin.logical_shards.count=1"],
    child_env(tmp_path, DEVICES_PER_PROCESS="1", LOG_DIR=str(tmp_path / "logs")),
  )
  assert done.returncode == 2
  assert (
    "2 processes cannot share the 1 logical data shards (logical_shards.count): run on a "
    "process count that divides 1 (1)"
  ) in done.stdout + done.stderr


# -- (b) an unreachable coordinator ----------------------------------------------------------------


def test_unreachable_coordinator_fails_in_time_naming_it(tmp_path):
  address = f"127.0.0.1:{closed_port()}"
  started = time.monotonic()
  done = run(
    [
      sys.executable,
      "-m",
      "t5x_lite.train",
      "--gin_file=models/quickstart_tiny.gin",
      "--gin_file=runs/quickstart.gin",
      f"--coordinator_address={address}",
      "--num_processes=2",
      "--process_id=1",
      "--distributed_timeout_s=10",
    ],
    child_env(tmp_path),
    timeout=180,
  )
  elapsed = time.monotonic() - started
  assert done.returncode == 2, done.stderr[-3000:]
  assert f"coordinator {address} is not reachable after 10s" in done.stderr
  assert elapsed < 120  # 10s of waiting plus imports on a slow machine; never jax's abort


def test_coordinator_wait_is_bounded_and_named():
  address = f"127.0.0.1:{closed_port()}"
  started = time.monotonic()
  with pytest.raises(UserError, match=f"coordinator {address} is not reachable after 1s"):
    distributed.initialize(address, num_processes=2, process_id=1, timeout_s=1)
  assert time.monotonic() - started < 5


@pytest.mark.parametrize(
  "kwargs,message",
  [
    (dict(num_processes=2, process_id=2), r"process_id 2 is outside \[0, 2\)"),
    (dict(num_processes=None, process_id=0), "needs --num_processes and --process_id"),
  ],
)
def test_bad_process_numbers_are_named(kwargs, message, monkeypatch):
  for name in ("NUM_PROCESSES", "PROCESS_ID"):
    monkeypatch.delenv(f"T5X_LITE_{name}", raising=False)
  with pytest.raises(UserError, match=message):
    distributed.initialize("127.0.0.1:1", **kwargs)


def test_bad_local_device_ids_are_named(monkeypatch):
  monkeypatch.setenv("T5X_LITE_LOCAL_DEVICE_IDS", "0,one")
  with pytest.raises(UserError, match="T5X_LITE_LOCAL_DEVICE_IDS='0,one'"):
    distributed.initialize("127.0.0.1:1", num_processes=2, process_id=0)


# -- (c) processes x devices that the mesh cannot use ---------------------------------------------


def test_partitions_not_dividing_all_processes_devices(corpus, tmp_path):
  done = run(
    [LOCAL_SH, 2, *train_flags(corpus, tmp_path / "run"), "--gin.NUM_PARTITIONS=3"],
    child_env(tmp_path, DEVICES_PER_PROCESS="2", LOG_DIR=str(tmp_path / "logs")),
  )
  assert done.returncode == 2
  # Both processes see the global device count (2 x 2), not their local one.
  assert "NUM_PARTITIONS=3 does not divide the 4 devices" in done.stdout + done.stderr
  assert "stopping the others" in done.stderr
  for i in range(2):
    assert "NUM_PARTITIONS=3" in (tmp_path / "logs" / f"process_{i}.log").read_text()


# -- the launcher's own process handling (a stand-in for python, no jax) ---------------------------

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$$" >"$PIDS/$T5X_LITE_PROCESS_ID"
echo "process $T5X_LITE_PROCESS_ID: $T5X_LITE_COORDINATOR_ADDRESS $T5X_LITE_NUM_PROCESSES $XLA_FLAGS"
if [[ $T5X_LITE_PROCESS_ID == "$FAIL" ]]; then sleep 0.5; echo "process $FAIL failed"; exit 3; fi
trap "$ON_TERM" TERM
sleep 300 &
wait
"""


@pytest.fixture
def fake_python(tmp_path):
  path = tmp_path / "fake_python"
  path.write_text(FAKE_PYTHON)
  path.chmod(0o755)
  (tmp_path / "pids").mkdir()
  return path


def fake_env(tmp_path, fake_python, **extra):
  settings = dict(
    PYTHON=str(fake_python),
    PIDS=str(tmp_path / "pids"),
    FAIL="none",
    ON_TERM='echo got TERM >"$PIDS/term_$T5X_LITE_PROCESS_ID"; exit 0',
    COORDINATOR_PORT="12345",
    LOG_DIR=str(tmp_path / "logs"),
    KILL_GRACE_S="1",
  )
  return child_env(tmp_path, **{**settings, **extra})


def alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A zombie is gone in all but name.
  stat = pathlib.Path(f"/proc/{pid}/stat")
  return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def test_one_failure_stops_all_processes(tmp_path, fake_python):
  # The others ignore SIGTERM, as peers stuck in a collective effectively do: SIGKILL follows.
  env = fake_env(tmp_path, fake_python, FAIL="1", ON_TERM="")
  started = time.monotonic()
  done = run(["bash", LOCAL_SH, 3, "--some_flag"], env, timeout=60)
  assert done.returncode == 3
  assert time.monotonic() - started < 30
  assert "process 1 exited with status 3" in done.stderr
  assert "process 1 failed" in done.stderr  # the failed process's log tail
  logs = tmp_path / "logs"
  # The caller's XLA_FLAGS are kept; the device count comes last, so it wins.
  assert (
    f"127.0.0.1:12345 3 {FAST_COMPILE} --xla_force_host_platform_device_count=2"
    in (logs / "process_2.log").read_text()
  )
  pids = [int((tmp_path / "pids" / str(i)).read_text()) for i in range(3)]
  deadline = time.monotonic() + 5
  while any(alive(p) for p in pids) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not any(alive(p) for p in pids)


def start_launcher(tmp_path, env) -> subprocess.Popen:
  """local.sh with 2 fake processes, once both have started."""
  proc = subprocess.Popen(
    ["bash", str(LOCAL_SH), "2"],
    env=env,
    cwd=REPO,
    text=True,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    start_new_session=True,
  )
  deadline = time.monotonic() + 20
  while len(os.listdir(tmp_path / "pids")) < 2 and time.monotonic() < deadline:
    time.sleep(0.1)
  time.sleep(0.3)  # let the fakes install their traps
  return proc


def signal_launcher(proc, *, pause_between: float | None = None) -> str:
  """SIGTERM to the launcher (twice, `pause_between` seconds apart, if given); its stderr once it
  has exited (killed with its process group if it has not within 30 s)."""
  try:
    proc.send_signal(signal.SIGTERM)
    if pause_between is not None:
      time.sleep(pause_between)
      proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=30)[1]
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)


def test_sigterm_is_forwarded(tmp_path, fake_python):
  proc = start_launcher(tmp_path, fake_env(tmp_path, fake_python))
  err = signal_launcher(proc)
  # Every process saved and exited 0 (what the fakes do on SIGTERM): so does the launcher.
  assert proc.returncode == 0, err
  assert "terminated, asking all processes to save and stop" in err
  assert "all processes stopped cleanly" in err
  assert sorted(p.name for p in (tmp_path / "pids").glob("term_*")) == ["term_0", "term_1"]


def test_a_save_longer_than_the_kill_grace_is_waited_for(tmp_path, fake_python):
  # On a loaded host a save can take longer than KILL_GRACE_S: a signal never escalates by time.
  saving = 'sleep 3; echo saved >"$PIDS/term_$T5X_LITE_PROCESS_ID"; exit 0'
  proc = start_launcher(tmp_path, fake_env(tmp_path, fake_python, ON_TERM=saving))
  err = signal_launcher(proc)
  assert proc.returncode == 0, err
  assert "SIGKILL" not in err and "all processes stopped cleanly" in err
  assert sorted(p.name for p in (tmp_path / "pids").glob("term_*")) == ["term_0", "term_1"]


def test_a_second_signal_kills_at_once(tmp_path, fake_python):
  proc = start_launcher(tmp_path, fake_env(tmp_path, fake_python, ON_TERM="sleep 60; exit 0"))
  started = time.monotonic()
  err = signal_launcher(proc, pause_between=1)
  assert time.monotonic() - started < 11  # 1 s between the signals, then at once
  assert proc.returncode == 130
  assert "stopping now (SIGKILL)" in err


# -- (d) the launch scripts parse and are shellcheck-clean -----------------------------------------


def test_launch_scripts_exist_and_run_the_train_command():
  """Every script the documentation points to is there, executable, and starts
  `python -m t5x_lite.train` with no distributed flag the CLI lacks; every script in launch/ is
  documented."""
  docs = [REPO / "README.md", REPO / "launch" / "README.md", *(REPO / "docs").glob("*.md")]
  readme = "".join(path.read_text() for path in docs)
  named = set(re.findall(r"launch/([\w.]+\.(?:sh|sbatch))", readme))
  assert (
    named == {p.name for p in LAUNCH_SCRIPTS} >= {"local.sh", "tpu_vm_pod.sh", "slurm_gpu.sbatch"}
  )
  cli_flags = set(
    re.findall(r'add_argument\(\s*"(--\w+)"', (REPO / "t5x_lite" / "train.py").read_text())
  )
  for script in LAUNCH_SCRIPTS:
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    text = script.read_text()
    assert "t5x_lite.train" in text, script.name
    used = set(
      re.findall(r"(--(?:coordinator_address|num_processes|process_id|multi_host)\b)", text)
    )
    assert used <= cli_flags, (script.name, used - cli_flags)


@pytest.mark.parametrize("script", LAUNCH_SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
  done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
  assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", LAUNCH_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
  done = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
  assert done.returncode == 0, done.stdout
