"""The train command and the commands around it run where TensorFlow, seqio and TFDS cannot be
imported, whenever the data needs none of them (synthetic or ready-made data): the processes
below refuse those imports. A killed and resumed run ends bit-identical to an uninterrupted one,
and ready-made examples are exactly the batches the task's own pipeline gives."""

import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import conftest
import jax
import numpy as np
import pytest

from t5x_lite import hf_files
from t5x_lite.data import testing

REPO = pathlib.Path(__file__).resolve().parent.parent
MODEL = [b for b in conftest.TINY_MODEL if not b.startswith("MIXTURE_OR_TASK_NAME")]


def without_tf(module: str, *args: str) -> list[str]:
  return testing.without_tf_command(sys.executable, module, *args)


def flags(model_dir, steps: int, *extra: str) -> list[str]:
  return [
    "--gin_file=runs/quickstart.gin",
    *[f"--gin.{b.replace(' = ', '=', 1)}" for b in MODEL],
    f"--gin.MODEL_DIR='{model_dir}'",
    f"--gin.TRAIN_STEPS={steps}",
    "--gin.CHECKPOINT_PERIOD=10",
    "--gin.EVAL_PERIOD=1000",
    "--gin.train.eval_steps=2",
    "--gin.train.log_period=10",
    *extra,
  ]


def run(cmd, timeout=300) -> subprocess.CompletedProcess:
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  return out


def kill_after_a_checkpoint(cmd, model_dir: pathlib.Path) -> None:
  """Starts `cmd`, SIGKILLs it once a checkpoint is complete (before the run's end)."""
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 240
  checkpoints = model_dir / "checkpoints"
  try:
    while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
      assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
      assert time.time() < deadline, "no checkpoint"
      time.sleep(0.02)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def assert_same_params(a_dir, b_dir) -> None:
  a = jax.device_get(hf_files.restore_params(str(a_dir)).params)
  b = jax.device_get(hf_files.restore_params(str(b_dir)).params)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)


def losses(model_dir) -> dict:
  rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_the_refusal_itself_works(tmp_path):
  probe = tmp_path / "probe.py"
  probe.write_text(
    "import importlib.util\nassert importlib.util.find_spec('tensorflow') is None\nimport seqio\n"
  )
  out = subprocess.run(without_tf("probe"), capture_output=True, text=True, cwd=tmp_path)
  assert out.returncode == 1 and "No module named 'seqio' (not installed here)" in out.stderr
  assert subprocess.run(without_tf("json.tool", "--help"), capture_output=True).returncode == 0


def test_synthetic_data_trains_resumes_and_exports_without_tf(tmp_path):
  steps = 60
  reference, killed = tmp_path / "reference", tmp_path / "killed"
  synthetic = "--gin.MIXTURE_OR_TASK_NAME='synthetic'"
  out = run(without_tf("t5x_lite.train", *flags(reference, steps, synthetic)))
  assert "training on synthetic data" in out.stdout
  cmd = without_tf("t5x_lite.train", *flags(killed, steps, synthetic))
  kill_after_a_checkpoint(cmd, killed)
  out = run(cmd)
  assert re.search(r"^resuming .* from step \d+", out.stdout, re.M)
  assert_same_params(reference, killed)
  assert losses(killed)[steps] == losses(reference)[steps]

  run(without_tf("t5x_lite.export_hf", f"--model_dir={killed}", f"--output_dir={tmp_path / 'hf'}"))
  assert (tmp_path / "hf" / "model.safetensors").is_file()
  assert "15570688" in run(without_tf("t5x_lite.model_info", "t5-efficient-tiny")).stdout


@pytest.mark.slow  # writes examples and trains three times: a minute on a shared 2-core host
@pytest.mark.ci
def test_ready_made_examples_are_the_tasks_batches_without_tf(tiny_corpus, tmp_path):
  steps, examples = 30, tmp_path / "examples"
  task = [*tiny_corpus.flags(), "--gin.MIXTURE_OR_TASK_NAME='text_span_corruption'"]
  # Made where TF is (two workers, as two training processes would read the rows).
  write = [
    sys.executable,
    "-m",
    "t5x_lite.write_examples",
    *flags(tmp_path / "unused", steps, *task),
    f"--output_dir={examples}",
    f"--steps={steps}",
    "--workers=2",
    "--chunk_steps=8",
  ]
  out = run(write)
  assert "train with --gin.ready_made.directory" in out.stdout
  index = json.loads((examples / "examples.json").read_text())
  assert index["complete"] and index["features"]["encoder_input_tokens"]["dtype"] == "uint8"

  # The task's own pipeline, where TF is: the reference.
  reference, killed = tmp_path / "reference", tmp_path / "killed"
  run([sys.executable, "-m", "t5x_lite.train", *flags(reference, steps, *task)])
  ready = f"--gin.ready_made.directory='{examples}'"
  cmd = without_tf(
    "t5x_lite.train",
    *flags(killed, steps, "--gin.MIXTURE_OR_TASK_NAME='text_span_corruption'", ready),
  )
  kill_after_a_checkpoint(cmd, killed)
  out = run(cmd)
  assert re.search(r"^resuming .* from step \d+", out.stdout, re.M)
  assert_same_params(reference, killed)
  assert losses(killed) == {s: v for s, v in losses(reference).items() if s in losses(killed)}

  # A run that needs more steps than the files hold, or other lengths, is refused in one line.
  more = subprocess.run(
    without_tf(
      "t5x_lite.train",
      *flags(
        tmp_path / "more", steps + 1, "--gin.MIXTURE_OR_TASK_NAME='text_span_corruption'", ready
      ),
    ),
    capture_output=True,
    text=True,
    cwd=REPO,
  )
  assert more.returncode == 2 and "write more with --steps=31" in more.stderr
  assert len(more.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "more").exists()


def test_the_tasks_configurables_are_all_known_to_a_process_without_them():
  # A process without the tasks sets aside bindings of exactly these names (gin_utils.parse_gin).
  import gin

  from t5x_lite import gin_utils
  import t5x_lite.tasks  # noqa: F401  (registers them all)

  registered = {
    c.name
    for c in gin.config._REGISTRY._selector_map.values()  # pylint: disable=protected-access
    if c.module.startswith(("t5x_lite.data", "t5x_lite.tasks"))
  }
  assert registered <= set(gin_utils.TASK_DATA_CONFIGURABLES)
