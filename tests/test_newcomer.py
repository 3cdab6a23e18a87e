"""A new user's first commands: gin files found from any working directory (one with runs/ and
models/ folders of its own included), the quickstart's printed next steps run as printed, and
launch/local.sh finds an interpreter with t5x_lite on its own."""

import os
import pathlib
import re
import subprocess
import sys

import gin
import pytest

from t5x_lite import gin_utils
from t5x_lite.errors import UserError

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def crowded_cwd(tmp_path, monkeypatch):
  """A working directory like the repo root after `make quickstart`: runs/ and models/ exist
  (directories, not gin files)."""
  (tmp_path / "runs" / "quickstart" / "checkpoints").mkdir(parents=True)
  (tmp_path / "models").mkdir()
  monkeypatch.chdir(tmp_path)
  return tmp_path


def test_gin_files_and_includes_resolve_past_local_directories(crowded_cwd):
  from t5x_lite import training  # noqa: F401  (registers the configurables)
  import t5x_lite.tasks  # noqa: F401

  gin.clear_config()
  try:
    # quickstart.gin includes runs/pretrain.gin, which includes runs/c4.gin.
    gin_utils.parse_gin(
      ["models/quickstart_tiny.gin", "runs/quickstart.gin"], ["MODEL_DIR = 'x'"], finalize=False
    )
    assert gin.query_parameter("%BATCH_SIZE") == 16
    assert gin.query_parameter("%C4_TFDS_VERSION") == "3.1.0"
  finally:
    gin.clear_config()


def test_a_local_gin_file_still_comes_first(crowded_cwd):
  (crowded_cwd / "runs" / "mine.gin").write_text("include 'runs/quickstart.gin'\nBATCH_SIZE = 4\n")
  from t5x_lite import training  # noqa: F401
  import t5x_lite.tasks  # noqa: F401

  gin.clear_config()
  try:
    gin_utils.parse_gin(["models/quickstart_tiny.gin", "runs/mine.gin"], [], finalize=False)
    assert gin.query_parameter("%BATCH_SIZE") == 4
  finally:
    gin.clear_config()


def test_missing_and_cyclic_includes_are_one_line(crowded_cwd):
  (crowded_cwd / "a.gin").write_text("include 'runs/nowhere.gin'\n")
  with pytest.raises(
    UserError, match=r"gin include 'runs/nowhere.gin' in .*a.gin not found; searched"
  ):
    gin_utils.parse_gin(["a.gin"], [])
  (crowded_cwd / "b.gin").write_text("include 'c.gin'\n")
  (crowded_cwd / "c.gin").write_text("include 'b.gin'\n")
  with pytest.raises(UserError, match="gin include cycle"):
    gin_utils.parse_gin(["b.gin"], [])


def fresh_shell_env():
  """What a new terminal has: no virtualenv active, this interpreter not on PATH."""
  env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHON", "PYTHONPATH")}
  venv_bin = os.path.dirname(sys.executable)
  env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
  return env


@pytest.mark.slow  # four CLI runs of a few steps each: about 1-4 minutes on 2 cores
def test_quickstart_next_commands_run_as_printed(crowded_cwd):
  """The quickstart (a few steps here) from a directory with runs/ and models/, then every
  command of its "next:" block, pasted into a shell as printed."""
  env = fresh_shell_env()
  quick = [
    "--gin.TRAIN_STEPS=4",
    "--gin.BATCH_SIZE=8",
    "--gin.EVAL_PERIOD=2",
    "--gin.CHECKPOINT_PERIOD=2",
    "--gin.train.eval_steps=1",
    "--gin.train.log_period=2",
  ]
  done = subprocess.run(
    [sys.executable, "-m", "t5x_lite.quickstart", "--model_dir=runs/qs", *quick],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  out = done.stdout
  assert re.search(r"^compiled the train step in \d+\.\d s", out, re.MULTILINE), out
  assert (crowded_cwd / "runs" / "qs" / "hf" / "tokenizer.json").is_file()
  card = (crowded_cwd / "runs" / "qs" / "hf" / "README.md").read_text()
  assert "steps: 4" in card and "final evaluation (step 4)" in card
  commands = dict(re.findall(r"^  (resume/extend|generate|in HF):\s+(.+)$", out, re.MULTILINE))
  assert set(commands) == {"resume/extend", "generate", "in HF"}, out
  assert all(c.startswith(sys.executable) for c in commands.values())  # not a bare `python`
  assert commands["resume/extend"].count("TRAIN_STEPS") == 1, commands["resume/extend"]

  # Pasted into a shell in another directory.
  elsewhere = crowded_cwd / "elsewhere"
  elsewhere.mkdir()
  resumed = subprocess.run(
    commands["resume/extend"],
    shell=True,
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
    cwd=elsewhere,
  )
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "runs/qs from step 4" in resumed.stdout and re.search(r"step\s+8/8", resumed.stdout)
  generated = subprocess.run(
    commands["generate"],
    shell=True,
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
    cwd=elsewhere,
  )
  assert generated.returncode == 0 and generated.stdout.strip(), generated.stderr[-3000:]
  pytest.importorskip("transformers")
  in_hf = subprocess.run(
    commands["in HF"],
    shell=True,
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
    cwd=elsewhere,
  )
  assert in_hf.returncode == 0 and in_hf.stdout.strip(), in_hf.stderr[-3000:]


def test_local_sh_finds_the_checkout_interpreter(crowded_cwd):
  """With no virtualenv active and no $PYTHON, local.sh runs the checkout's .venv (or the one
  active), not a python3 that lacks jax: the error is ours, not 'No module named jax'."""
  checkout_python = REPO / ".venv" / "bin" / "python"
  if pathlib.Path(sys.executable) != checkout_python:
    pytest.skip("the tests do not run from the checkout's .venv")
  done = subprocess.run(
    [str(REPO / "launch" / "local.sh"), "1", "--gin_file=runs/none.gin"],
    capture_output=True,
    text=True,
    env=fresh_shell_env(),
    timeout=120,
  )
  assert done.returncode == 2
  assert "gin file 'runs/none.gin' not found" in done.stdout + done.stderr


def test_printed_commands_name_the_interpreter(monkeypatch, tmp_path):
  import shlex

  from t5x_lite import commands, import_hf, quickstart

  venv_bin = os.path.dirname(sys.executable)
  monkeypatch.setenv("PATH", fresh_shell_env()["PATH"])
  monkeypatch.chdir(tmp_path)
  assert commands.python() == os.path.abspath(sys.executable)  # outside the checkout: absolute
  monkeypatch.chdir(os.path.dirname(os.path.dirname(venv_bin)))  # e.g. the checkout, for .venv/
  assert commands.python() == os.path.abspath(sys.executable)  # there too: pasted anywhere
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("PATH", venv_bin + os.pathsep + os.environ["PATH"])
  assert commands.python() == "python"  # what an active virtualenv runs anyway

  (tmp_path / "mine.gin").write_text("BATCH_SIZE = 8\n")
  extra = ["--gin_file=mine.gin", "--gin.TRAIN_STEPS=300", "--gin.BATCH_SIZE=8"]
  printed = dict(quickstart.next_commands("/r/q s", "/r/q s/hf", 300, extra))
  assert shlex.split(printed["resume/extend"]) == [
    "python",
    "-m",
    "t5x_lite.train",
    "--gin_file=models/quickstart_tiny.gin",  # found in the repo's gin/ from any directory
    "--gin_file=runs/quickstart.gin",
    f"--gin_file={tmp_path / 'mine.gin'}",  # the user's own: absolute
    "--gin.BATCH_SIZE=8",
    "--gin.MODEL_DIR='/r/q s'",
    "--gin.TRAIN_STEPS=600",  # once
  ]
  assert shlex.split(printed["generate"])[3:] == [
    "--model_dir=/r/q s",
    "--input=The <extra_id_0> of the module.",
  ]
  c4, offline = import_hf.continue_commands("/m", "runs/pretrain.gin", has_vocab=True)
  assert "--gin_file=runs/pretrain.gin" in shlex.split(c4[1])
  assert "quickstart" in offline[0] and "--gin_file=runs/quickstart.gin" in shlex.split(offline[1])
  assert "--gin.task_vocabulary.path='/m/spiece.model'" in shlex.split(offline[1])
