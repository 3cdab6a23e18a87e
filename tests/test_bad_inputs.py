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
import pytest

from t5x_lite import gin_utils
from t5x_lite.data import testing
from t5x_lite.errors import UserError
import t5x_lite.tasks  # noqa: F401

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = conftest.TINY_TRAIN_FLAGS


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
    "the train split (text_corpus.train_files / text_corpus.validation_files) holds no documents",
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
    "holds no documents: its files are empty or hold only blank or skipped lines (each line "
    "one JSON object with a string in its 'text' field); 20 of the 20 records read were skipped "
    "(20 malformed, 0 empty, 0 binary)",
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
    "gin file of binary bytes",
    lambda c, d: train_cmd(f"--gin_file={c['root']}/binary.gin", f"--gin.MODEL_DIR='{d}'"),
    "binary.gin is not text (not UTF-8); is it a gin file?",
    False,
  ),
  (
    "gin file that binds nothing",
    lambda c, d: train_cmd(f"--gin_file={c['root']}/empty-0.txt"),
    "the gin files bind no train.model_dir, train.train_steps, train.batch_size, "
    "train.mixture_or_task_name, train.task_feature_lengths; add the gin file that does",
    False,
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


def tree(path: pathlib.Path) -> dict[str, str] | None:
  """Every file and directory under `path` with a digest of its contents; None if it is absent."""
  if not path.exists():
    return None
  return {
    str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    for p in path.rglob("*")
  }


def quiet_cli_env() -> dict[str, str]:
  """The environment of a user's shell: no TF_CPP_MIN_LOG_LEVEL (the commands set their own)."""
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
  return env


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
  if name == "gin file of binary bytes":
    (corpus["root"] / "binary.gin").write_bytes(bytes(range(256)) * 4)
  before = tree(model_dir)
  done = subprocess.run(
    command(corpus, model_dir),
    cwd=REPO,
    env=quiet_cli_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  lines = done.stderr.splitlines()
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


# What the native libraries print while they start (TensorFlow's oneDNN and CUDA banners, absl's
# "All log messages before absl::InitializeLog()", a failed cuInit) or log in their own format.
NATIVE_NOISE = re.compile(
  r"InitializeLog|cuInit|cudart_stub|oneDNN|cpu_feature_guard|^[IWEF]\d{4} \d\d:", re.M
)

# Every `python -m t5x_lite.*` command with a mistake it reports in one line; most of them import
# TensorFlow (or JAX) before they find it.
COMMANDS = [
  ("train", lambda r: [f"--gin_file={r}/empty-0.txt"], "the gin files bind no train.model_dir"),
  ("export_hf", lambda r: [f"--model_dir={r}/none", f"--output_dir={r}/o"], "no checkpoints in"),
  ("import_hf", lambda r: [f"--hf_dir={r}", f"--model_dir={r}/o"], "no config.json in"),
  ("infer", lambda r: [f"--model_dir={r}/none", "--input=x"], "no checkpoints in"),
  (
    "cache_tokenized",
    lambda r: [f"--gin_file={r}/empty-0.txt", f"--cache_dir={r}/c"],
    "the gin files do not set MIXTURE_OR_TASK_NAME",
  ),
  ("inspect_data", lambda r: [f"--gin_file={r}/empty-0.txt"], "do not set MIXTURE_OR_TASK_NAME"),
  ("model_info", lambda r: ["t5-efficient-nope"], "unknown model name 't5-efficient-nope'"),
  ("efficiency", lambda r: ["t5-efficient-nope"], "unknown model name 't5-efficient-nope'"),
  ("plan", lambda r: ["--gin_file=runs/pretrain.gin", "--target=v9"], "unknown --target 'v9'"),
  ("train_vocab", lambda r: [f"--input={r}/none-*", f"--output={r}/v"], "no files match"),
  (
    "quickstart",
    lambda r: [f"--model_dir={r}/empty-0.txt/run"],
    "MODEL_DIR " + "{r}/empty-0.txt/run cannot be created",
  ),
  (
    "data.quickstart_corpus",
    lambda r: [f"--cache_dir={r}/empty-0.txt/q"],
    "--cache_dir {r}/empty-0.txt/q cannot be created",
  ),
]


@pytest.mark.parametrize("module, args, message", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_commands_start_without_native_noise(corpus, module, args, message):
  """--help, and the one-line error, come alone: no banner of the native libraries before them."""
  root = corpus["root"]
  for argv, code in ((["--help"], 0), (args(root), 2)):
    done = subprocess.run(
      [sys.executable, "-m", f"t5x_lite.{module}", *argv],
      cwd=REPO,
      env=quiet_cli_env(),
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert done.returncode == code, done.stderr[-3000:]
    assert not NATIVE_NOISE.search(done.stdout + done.stderr), done.stderr[-3000:]
  assert done.stderr.splitlines() == [done.stderr.strip()]
  assert done.stderr.startswith("error: ") and message.format(r=root) in done.stderr


def hf_dir_with_config(path: pathlib.Path) -> pathlib.Path:
  path.mkdir()
  dims = dict(d_model=64, d_ff=128, num_heads=2, d_kv=32, num_layers=2, vocab_size=256)
  (path / "config.json").write_text(json.dumps({"model_type": "t5", **dims}))
  return path


@pytest.mark.parametrize(
  "weights, message",
  [
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{", "(Error while deserializing: "),
    (bytes(range(256)) * 8, "(Error while deserializing: header too large)"),
  ],
  ids=["cut short", "not safetensors"],
)
def test_import_of_weights_that_do_not_load(tmp_path, weights, message):
  from t5x_lite import import_hf

  hf_dir = hf_dir_with_config(tmp_path / "hf")
  (hf_dir / "model.safetensors").write_bytes(weights)
  with pytest.raises(UserError) as refused:
    import_hf.main([f"--hf_dir={hf_dir}", f"--model_dir={tmp_path / 'out' / 'run'}"])
  assert str(refused.value).startswith(f"{hf_dir}/model.safetensors is not a complete safetensors")
  assert message in str(refused.value) and "download or copy it again" in str(refused.value)
  assert not (tmp_path / "out").exists()


def test_sentencepiece_files_that_are_empty_or_not_one(tmp_path):
  from t5x_lite import hf_files

  with pytest.raises(UserError, match=r"^x.model is empty, not a SentencePiece model$"):
    hf_files.check_sentencepiece(b"", "x.model")
  with pytest.raises(UserError, match=r"^x.model is not a SentencePiece model \(it does not parse"):
    hf_files.check_sentencepiece(bytes(range(256)) * 8, "x.model")


def test_export_to_where_no_directory_can_be(trained, tmp_path):
  from t5x_lite import export_hf

  (tmp_path / "a_file").write_text("mine")
  before = tree(tmp_path)
  with pytest.raises(
    UserError,
    match=rf"^output directory {tmp_path}/a_file/hf cannot be created: {tmp_path}/a_file is a "
    rf"file, not a directory; choose another output directory$",
  ):
    export_hf.main([f"--model_dir={trained}", f"--output_dir={tmp_path / 'a_file' / 'hf'}"])
  with pytest.raises(UserError, match=r"cannot be created: File name too long; choose another"):
    export_hf.main([f"--model_dir={trained}", f"--output_dir={tmp_path / ('x' * 300)}"])
  with pytest.raises(UserError, match=rf"^--vocab {tmp_path} is a directory; give the Sentence"):
    export_hf.main([f"--model_dir={trained}", f"--output_dir={tmp_path}/o", f"--vocab={tmp_path}"])
  assert tree(tmp_path) == before


@pytest.mark.parametrize(
  "module, flags, message",
  [
    ("inspect_data", ["--num_examples=-1"], "--num_examples must be 0 or more, got -1"),
    ("inspect_data", ["--split=test"], "task 'text_span_corruption' has no split 'test'; its"),
    ("cache_tokenized", ["--num_shards=-1"], "--num_shards must be a positive number, got -1"),
    ("cache_tokenized", ["--splits=train,tset"], "has no split 'tset'; its splits: train, val"),
    ("inspect_data", ["BINARY_VOCAB"], "(BINARY) cannot be read: Error parsing message"),
    ("cache_tokenized", ["EMPTY_VOCAB"], "(EMPTY) cannot be read: the file is empty; bind a"),
  ],
)
def test_data_commands_check_their_flags_and_vocabulary(corpus, tmp_path, module, flags, message):
  import importlib

  vocabs = {"BINARY": tmp_path / "binary.model", "EMPTY": tmp_path / "empty.model"}
  vocabs["BINARY"].write_bytes(bytes(range(256)) * 8)
  vocabs["EMPTY"].write_bytes(b"")
  for name, path in vocabs.items():
    flags = [f"--gin.task_vocabulary.path='{path}'" if f == f"{name}_VOCAB" else f for f in flags]
    message = message.replace(f"({name})", f"({path})")
  flags = [  # the case's flags last: they override the corpus's vocabulary
    *data_flags(corpus),
    "--gin.MIXTURE_OR_TASK_NAME='text_span_corruption'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
    *flags,
  ]
  if module == "cache_tokenized":
    flags.append(f"--cache_dir={tmp_path / 'cache'}")
  with gin_utils.fresh_config(), pytest.raises(UserError) as refused:
    importlib.import_module(f"t5x_lite.{module}").main(flags)
  assert message in str(refused.value) and "\n" not in str(refused.value)
  assert not (tmp_path / "cache").exists()
