"""Storage that fails during a run: one line, exit code 75, no hang; the same command resumes.

Each test starts the train command on the tiny model, breaks MODEL_DIR once a checkpoint is
there, and checks the exit, the line, the time it took and the checkpoints before the failure;
then it mends the storage and runs the same command to the end. Breaking storage as root:
`chattr +i` (a directory or file that stops accepting writes, even for root) or a small tmpfs
filled up; a test skips where neither is permitted.
"""

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import conftest
from conftest import ONE_DATA_SHARD, TINY_MODEL
import pytest

from t5x_lite import storage_faults
from t5x_lite.errors import STORAGE_EXIT_CODE, StorageError

STEPS = 200  # long enough that the storage breaks while the run still trains
PERIOD = 4
# The failed save is looked for at the next step, and the exit is bounded (errors.py); a
# generous bound for two loaded CPU cores. The bound is 60 s.
EXIT_BOUND_S = 60


def command(corpus, model_dir) -> list[str]:
  bindings = [
    *TINY_MODEL,
    ONE_DATA_SHARD,
    *corpus.bindings(),
    f"MODEL_DIR = '{model_dir}'",
    f"TRAIN_STEPS = {STEPS}",
    f"CHECKPOINT_PERIOD = {PERIOD}",
    f"EVAL_PERIOD = {STEPS}",
    "train.eval_steps = 0",
    "train.log_period = 4",
  ]
  return [
    sys.executable,
    "-m",
    "t5x_lite.train",
    "--gin_file=runs/quickstart.gin",
    *[f"--gin_bindings={b}" for b in bindings],
  ]


def steps_saved(model_dir: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit())


def run_and_break(cmd, model_dir: pathlib.Path, break_storage) -> tuple[int, str, float, list]:
  """Runs `cmd`, calls `break_storage()` once a checkpoint is complete; returns the exit code,
  the output, seconds from the break to the exit, and the steps saved before the break."""
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.monotonic() + 300
    while not ((model_dir / "checkpoints").is_dir() and steps_saved(model_dir)):
      assert proc.poll() is None, proc.communicate()[0]
      assert time.monotonic() < deadline, "no checkpoint in 300 s"
      time.sleep(0.05)
    saved = steps_saved(model_dir)
    break_storage()
    broken = time.monotonic()
    out, _ = proc.communicate(timeout=EXIT_BOUND_S + 60)
    return proc.returncode, out, time.monotonic() - broken, saved
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def assert_one_line_stop(code: int, out: str, seconds: float, model_dir, saved: list, reason: str):
  assert code == STORAGE_EXIT_CODE, out
  assert "Traceback" not in out, out
  errors = [line for line in out.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, out
  assert reason in errors[0] and str(model_dir) in errors[0], errors[0]
  # Nothing else after it: the line is the last the run prints.
  assert out.rstrip().splitlines()[-1] == errors[0], out
  assert seconds < EXIT_BOUND_S, f"exited {seconds:.0f} s after the storage broke"
  kept = steps_saved(model_dir)
  assert set(saved) <= set(kept), (saved, kept)
  assert f"resumes from step {kept[-1]}" in errors[0], errors[0]


def assert_resumes_to_the_end(cmd, model_dir, from_step: int):
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout + done.stderr
  assert f"from step {from_step} (checkpoints in" in done.stdout, done.stdout
  assert steps_saved(model_dir)[-1] == STEPS
  rows = [json.loads(line) for line in open(model_dir / "metrics.jsonl")]
  trained = [r["step"] for r in rows if "loss" in r]
  assert trained == sorted(set(trained)), "a step appears twice in metrics.jsonl"


def chattr(flag: str, path: pathlib.Path) -> None:
  subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


@pytest.fixture
def immutable(tmp_path):
  """`make(path)` stops `path` accepting writes, even for root; undone after the test."""
  if shutil.which("chattr") is None:
    pytest.skip("chattr is not installed")
  probe = tmp_path / "probe"
  probe.mkdir()
  try:
    chattr("+i", probe)
  except subprocess.CalledProcessError:
    pytest.skip("chattr +i is not permitted here")
  chattr("-i", probe)
  made = []

  def make(path):
    chattr("+i", path)
    made.append(path)

  yield make
  for path in made:
    chattr("-i", path)


@pytest.mark.slow
@pytest.mark.ci
def test_unwritable_checkpoints_dir_ends_the_run_in_one_line(tiny_corpus, tmp_path, immutable):
  model_dir = tmp_path / "run"
  cmd = command(tiny_corpus, model_dir)
  code, out, seconds, saved = run_and_break(
    cmd, model_dir, lambda: immutable(model_dir / "checkpoints")
  )
  assert_one_line_stop(code, out, seconds, model_dir, saved, "Operation not permitted (EPERM)")
  chattr("-i", model_dir / "checkpoints")
  assert_resumes_to_the_end(cmd, model_dir, steps_saved(model_dir)[-1])


@pytest.mark.slow
@pytest.mark.ci
def test_unwritable_metrics_file_ends_the_run_in_one_line(tiny_corpus, tmp_path, immutable):
  model_dir = tmp_path / "run"
  cmd = command(tiny_corpus, model_dir)
  code, out, seconds, saved = run_and_break(
    cmd, model_dir, lambda: immutable(model_dir / "metrics.jsonl")
  )
  assert_one_line_stop(code, out, seconds, model_dir, saved, "writing metrics")
  chattr("-i", model_dir / "metrics.jsonl")
  assert_resumes_to_the_end(cmd, model_dir, steps_saved(model_dir)[-1])


@contextlib.contextmanager
def small_tmpfs(where: pathlib.Path, size: str = "64m"):
  where.mkdir()
  mounted = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
  )
  if mounted.returncode != 0:
    pytest.skip("mounting a tmpfs is not permitted here")
  try:
    yield where
  finally:
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: pathlib.Path) -> pathlib.Path:
  """Writes a file into `directory` until its file system is full; returns the file."""
  filler = directory / "filler"
  chunk = b"\0" * (1 << 16)
  with contextlib.suppress(OSError), open(filler, "wb") as f:
    while True:
      f.write(chunk)
      f.flush()
  return filler


@pytest.mark.slow
@pytest.mark.ci
def test_disk_full_ends_the_run_in_one_line(tiny_corpus, tmp_path):
  with small_tmpfs(tmp_path / "disk") as disk:
    model_dir = disk / "run"
    cmd = command(tiny_corpus, model_dir)
    filled = []
    code, out, seconds, saved = run_and_break(cmd, model_dir, lambda: filled.append(fill(disk)))
    assert_one_line_stop(code, out, seconds, model_dir, saved, "No space left on device (ENOSPC)")
    filled[0].unlink()  # space again: a leftover `N.orbax-checkpoint-tmp` must not matter
    assert_resumes_to_the_end(cmd, model_dir, steps_saved(model_dir)[-1])


# -- the messages, in process ------------------------------------------------------------------


def test_os_error_is_named_with_its_errno():
  error = OSError(28, "No space left on device", "/runs/a/metrics.jsonl")
  assert storage_faults.reason(error) == "No space left on device (ENOSPC)"


def test_tensorstore_error_text_gives_its_os_error():
  error = ValueError(
    'RESOURCE_EXHAUSTED: Error writing "x" in OCDBT database at local file "/r/": Failed to '
    "write 1569575 bytes to file 15: No space left on device [os_error_code='28']"
  )
  assert storage_faults.is_storage_error(error)
  assert storage_faults.reason(error) == "No space left on device (ENOSPC)"


def test_a_programming_error_is_not_a_storage_error():
  assert not storage_faults.is_storage_error(ValueError("shapes (2,) and (3,) differ"))
  with pytest.raises(KeyError):
    with storage_faults.writing("metrics", "/runs/a/metrics.jsonl"):
      raise KeyError("step")


def test_writing_names_what_and_where():
  with pytest.raises(StorageError, match=r"writing config.gin to /r/config.gin failed: .*EACCES"):
    with storage_faults.writing("config.gin", "/r/config.gin"):
      raise PermissionError(13, "Permission denied")


def test_one_process_raises_at_once_and_agrees_with_itself():
  faults = storage_faults.Faults()
  with pytest.raises(StorageError):
    with faults.held():
      raise StorageError("writing metrics to /r failed: x")
  faults.agree()  # nothing held: no error


def test_exit_code_is_documented():
  root = pathlib.Path(conftest.__file__).parent.parent
  for doc in ("README.md", os.path.join("docs", "resume.md")):
    assert f"exit code {STORAGE_EXIT_CODE}" in (root / doc).read_text(), doc


def test_an_error_that_names_its_os_error_in_text_only():
  # TF's gfile (which writes the stream reader's data positions) raises errors without an errno.
  error = RuntimeError("/r/data_state/8/shard_0/position.json.tmp; No space left on device")
  assert storage_faults.reason(error) == "No space left on device (ENOSPC)"
