"""Every user mistake is one line on stderr, exit code 2, no traceback, and leaves MODEL_DIR as it
was (or absent, when it was). Each case runs the real command in a fresh process, with the CLI's
own logging defaults (no TF_CPP_MIN_LOG_LEVEL from the caller)."""

import hashlib
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys

import conftest
from conftest import ONE_DATA_SHARD, TINY_MODEL
import pytest

from t5x_lite import gin_utils
from t5x_lite.data import testing
import t5x_lite.tasks  # noqa: F401

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = [
  "--gin_file=runs/quickstart.gin",
  *[f"--gin.{binding.replace(' = ', '=', 1)}" for binding in [*TINY_MODEL, ONE_DATA_SHARD]],
  "--gin.train.eval_steps=0",
  "--gin.TRAIN_STEPS=1",
  "--gin.CHECKPOINT_PERIOD=1",
  "--gin.EVAL_PERIOD=1",
]


@pytest.fixture(scope="module")
def corpus(tiny_corpus):
  """The shared corpus, with an empty text file and JSON lines without a "text" field beside it."""
  root = tiny_corpus.root
  (root / "empty-0.txt").write_text("")
  (root / "no_text_key.jsonl").write_text(
    "".join(json.dumps({"body": doc}) + "\n" for doc in testing.make_documents(20, seed=7))
  )
  return {"root": root, "flags": tiny_corpus.flags()}


def data_flags(corpus) -> list[str]:
  return corpus["flags"]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
  """A run with a checkpoint at step 1, trained in this process (one compile, no evaluation)."""
  model_dir = tmp_path_factory.mktemp("trained") / "run"
  flags = TINY + data_flags(corpus) + [f"--gin.MODEL_DIR='{model_dir}'"]
  files, bindings, _ = gin_utils.split_gin_flags(flags)
  conftest.train_in_process(files, bindings)
  return model_dir


def train_cmd(*flags):
  return [sys.executable, "-m", "t5x_lite.train", *flags]


# Each case: (id, builds the command from (corpus, model_dir), what the one line must contain,
# whether MODEL_DIR starts as a copy of the trained run).
CASES = [
  (
    "misspelled macro",
    lambda c, d: train_cmd(*TINY, *data_flags(c), f"--gin.MODEL_DIR='{d}'", "--gin.TRAIN_STEPZ=3"),
    "--gin.TRAIN_STEPZ sets a macro that no gin file uses (did you mean TRAIN_STEPS?)",
    False,
  ),
  (
    "empty corpus",
    lambda c, d: train_cmd(
      *TINY,
      *data_flags(c),
      f"--gin.MODEL_DIR='{d}'",
      f"--gin.text_corpus.train_files='{c['root']}/empty-*.txt'",
    ),
    "the train split of task 'text_span_corruption' yields no batch",
    False,
  ),
  (
    "jsonl without the text key",
    lambda c, d: train_cmd(
      *TINY,
      *data_flags(c),
      f"--gin.MODEL_DIR='{d}'",
      "--gin.MIXTURE_OR_TASK_NAME='jsonl_span_corruption'",
      f"--gin.jsonl_corpus.train_files='{c['root']}/no_text_key.jsonl'",
      f"--gin.jsonl_corpus.validation_files='{c['root']}/no_text_key.jsonl'",
    ),
    "yields no batch: its files hold no documents (empty, or JSON lines without the field",
    False,
  ),
  (
    "partitions not dividing the heads",
    lambda c, d: train_cmd(
      *TINY, *data_flags(c), f"--gin.MODEL_DIR='{d}'", "--gin.NUM_PARTITIONS=4"
    ),
    "NUM_PARTITIONS=4 does not divide the model's num_heads=2",
    False,
  ),
  (
    "MODEL_DIR is a file",
    lambda c, d: train_cmd(*TINY, *data_flags(c), f"--gin.MODEL_DIR='{c['root']}/empty-0.txt'"),
    "empty-0.txt is a file, not a directory; choose another MODEL_DIR",
    False,
  ),
  (
    "MODEL_DIR below a file",
    lambda c, d: train_cmd(*TINY, *data_flags(c), f"--gin.MODEL_DIR='{c['root']}/empty-0.txt/run'"),
    "cannot be created: ",
    False,
  ),
  (
    "vocabulary on an unreachable object store",
    lambda c, d: train_cmd(
      *TINY,
      *data_flags(c),
      f"--gin.MODEL_DIR='{d}'",
      "--gin.task_vocabulary.path='gs://t5x-lite-test-no-such-bucket/vocab.model'",
    ),
    "the vocabulary of task 'text_span_corruption' (gs://t5x-lite-test-no-such-bucket/vocab.model)"
    " cannot be read (offline?)",
    False,
  ),
  (
    "noise density out of range",
    lambda c, d: train_cmd(
      *TINY,
      *data_flags(c),
      f"--gin.MODEL_DIR='{d}'",
      "--gin.span_corruption_config.noise_density=1.5",
    ),
    "span_corruption_config.noise_density must be in (0, 1), got 1.5",
    False,
  ),
  (
    "resume with another model",
    lambda c, d: train_cmd(
      *TINY,
      *data_flags(c),
      f"--gin.MODEL_DIR='{d}'",
      "--gin.TRAIN_STEPS=2",
      "--gin.model_config.num_decoder_layers=3",
    ),
    "was trained with model_config.num_decoder_layers=2, this run has 3",
    True,
  ),
  (
    "resume with another batch size",
    lambda c, d: train_cmd(
      *TINY, *data_flags(c), f"--gin.MODEL_DIR='{d}'", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=16"
    ),
    "was trained on other data settings (batch_size 8 -> 16",
    True,
  ),
  (
    "MODEL_DIR in use",
    lambda c, d: train_cmd(*TINY, *data_flags(c), f"--gin.MODEL_DIR='{d}'", "--gin.TRAIN_STEPS=4"),
    "another training run (pid",
    True,
  ),
  (
    "unknown task",
    lambda c, d: train_cmd(
      *TINY, *data_flags(c), f"--gin.MODEL_DIR='{d}'", "--gin.MIXTURE_OR_TASK_NAME='no_such_task'"
    ),
    "unknown task or mixture 'no_such_task'; registered: ",
    False,
  ),
  (
    "MODEL_DIR name too long",
    lambda c, d: train_cmd(*TINY, *data_flags(c), f"--gin.MODEL_DIR='{d}/{'x' * 300}'"),
    "cannot be created: File name too long; choose another MODEL_DIR",
    False,
  ),
  (
    "MODEL_DIR holds a file named checkpoints",
    lambda c, d: train_cmd(*TINY, *data_flags(c), f"--gin.MODEL_DIR='{d}'"),
    "run/checkpoints is a file where the run keeps its checkpoints directory; move it away or "
    "choose another MODEL_DIR",
    False,
  ),
  (
    "checkpoint without its data position",
    lambda c, d: train_cmd(*TINY, *data_flags(c), f"--gin.MODEL_DIR='{d}'", "--gin.TRAIN_STEPS=2"),
    "/data_state/1; pass --gin.train.allow_data_change=True to continue from step 1 with the data "
    "read from its start, or use another MODEL_DIR to start afresh",
    True,
  ),
  (
    "HF config.json not an object",
    lambda c, d: [
      sys.executable,
      "-m",
      "t5x_lite.import_hf",
      f"--hf_dir={c['root']}/hf",
      f"--model_dir={d}",
    ],
    "config.json holds a JSON list, not an object",
    False,
  ),
]


NATIVE_BANNER = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IW]\d{4} )")


def tree(path: pathlib.Path) -> dict[str, str] | None:
  """Every file and directory under `path` with a digest of its contents; None if it is absent."""
  if not path.exists():
    return None
  return {
    str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    for p in path.rglob("*")
  }


@pytest.mark.parametrize("name, command, message, from_trained", CASES, ids=[c[0] for c in CASES])
def test_one_line_error(corpus, trained, tmp_path, name, command, message, from_trained):
  model_dir = tmp_path / "run"
  if from_trained:
    shutil.copytree(trained, model_dir)
  if name == "MODEL_DIR in use":  # held by a live process on this host: this test
    (model_dir / "RUN_LOCK").write_text(
      json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "started": "2026-01-01T00:00:00"}
      )
    )
  if name == "HF config.json not an object":
    (corpus["root"] / "hf").mkdir(exist_ok=True)
    (corpus["root"] / "hf" / "config.json").write_text("[1, 2]")
  if name == "MODEL_DIR holds a file named checkpoints":
    model_dir.mkdir()
    (model_dir / "checkpoints").write_text("not a directory")
  if name == "checkpoint without its data position":
    shutil.rmtree(model_dir / "data_state" / "1")
  before = tree(model_dir)
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
  done = subprocess.run(
    command(corpus, model_dir), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  lines = done.stderr.splitlines()
  if name == "HF config.json not an object":
    # import_hf does not hide the native libraries' import banners as the train CLI does.
    lines = [l for l in lines if not NATIVE_BANNER.match(l)]
  assert done.returncode == 2, done.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
  assert message in lines[0]
  assert "Traceback" not in done.stdout + done.stderr
  # Nothing is created, changed or removed: no logs/, no tensorboard/, no config.gin.
  assert tree(model_dir) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_model_dir_not_writable(corpus, tmp_path):
  parent = tmp_path / "read_only"
  parent.mkdir()
  parent.chmod(0o555)
  try:
    done = subprocess.run(
      train_cmd(*TINY, *data_flags(corpus), f"--gin.MODEL_DIR='{parent}/run'"),
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
    )
  finally:
    parent.chmod(0o755)
  assert done.returncode == 2
  assert done.stderr.splitlines() == [
    f"error: MODEL_DIR {parent}/run is not writable ({parent} "
    f"does not allow writing for this user); choose another "
    f"MODEL_DIR or fix its permissions"
  ]
