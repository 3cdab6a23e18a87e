"""Fine-tuning: the initial model (t5x_lite checkpoint or HF directory), seq2seq files, decoding
eval, resumption after SIGKILL without the initial checkpoint, and the quickstart demo."""

import dataclasses
import gzip
import json
import shutil
import signal
import subprocess
import sys
import time

from conftest import ONE_DATA_SHARD
import gin
import jax
import numpy as np
import pytest

from t5x_lite import (
  config,
  export_hf,
  finetune_init,
  gin_utils,
  hf_files,
  infer,
  partitioning,
  training,
)
from t5x_lite.data import pipeline, registry, seq2seq_sources, testing
from t5x_lite.errors import UserError
from t5x_lite.models import EncoderDecoderModel
import t5x_lite.tasks  # noqa: F401
from t5x_lite.trainer import Trainer

MODEL = [
  "model_config.name = 't5-efficient-tiny-dm64-ff128-nh2-kv32-nl2'",
  "model_config.vocab_size = 256",
]
PRETRAIN_STEPS = 4


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A tiny model pretrained for 4 steps on a text corpus with its own vocabulary."""
  root = tmp_path_factory.mktemp("pretrain")
  docs = testing.make_documents(120, seed=3, max_words=60)
  gin.clear_config()
  gin_utils.parse_gin(
    ["runs/quickstart.gin"],
    [
      *MODEL,
      "MIXTURE_OR_TASK_NAME = 'text_span_corruption'",
      "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}",
      "BATCH_SIZE = 8",
      ONE_DATA_SHARD,
      f"text_corpus.train_files = '{testing.write_text_shards(root, 'train', docs[:100], 1)}'",
      f"text_corpus.validation_files = '{testing.write_text_shards(root, 'val', docs[100:], 1)}'",
      f"task_vocabulary.path = '{testing.train_tiny_vocab(root, vocab_size=100)}'",
      f"MODEL_DIR = '{root / 'run'}'",
      f"TRAIN_STEPS = {PRETRAIN_STEPS}",
      "CHECKPOINT_PERIOD = 4",
      "EVAL_PERIOD = 4",
      "train.eval_steps = 1",
    ],
  )
  try:
    training.train()
  finally:
    gin.clear_config()
  return root / "run"


@pytest.fixture(scope="module")
def seq2seq_data(tmp_path_factory):
  """TSV train / eval files: the first words of a document -> its next three words."""
  root = tmp_path_factory.mktemp("seq2seq")
  docs = testing.make_documents(80, seed=5, min_words=8, max_words=12)
  rows = [(" ".join(d.split()[:5]), " ".join(d.split()[5:8])) for d in docs]
  for name, part in (("train.tsv", rows[:64]), ("eval.tsv", rows[64:])):
    (root / name).write_text("".join(f"{i}\t{t}\n" for i, t in part))
  return root / "train.tsv", root / "eval.tsv"


def finetune_bindings(model_dir, data, steps, initial=None, hf_dir=None, period=2):
  train_files, eval_files = data
  out = [
    *MODEL,
    f"MODEL_DIR = '{model_dir}'",
    f"TRAIN_STEPS = {steps}",
    f"FINETUNE_TRAIN_FILES = '{train_files}'",
    f"FINETUNE_EVAL_FILES = '{eval_files}'",
    "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 8}",
    "BATCH_SIZE = 8",
    ONE_DATA_SHARD,
    f"CHECKPOINT_PERIOD = {period}",
    f"EVAL_PERIOD = {period}",
    "train.eval_steps = 1",
    "train.log_period = 1",
    "train.num_microbatches = 1",
    "model_config.dtype = 'float32'",
    "model_config.remat_policy = 'none'",
    "decode_eval.batch_size = 8",
  ]
  if initial:
    out.append(f"INITIAL_CHECKPOINT_PATH = '{initial}'")
  if hf_dir:
    out.append(f"HF_INIT_DIR = '{hf_dir}'")
  return out


def parse(bindings):
  gin.clear_config()
  gin_utils.parse_gin(["runs/finetune.gin"], bindings)


def initial_state(model_dir, steps):
  """What the training loop starts from: (step, state, trainer) for the parsed gin config."""
  cfg = config.model_config()
  lengths = {"inputs": 16, "targets": 8}
  trainer = Trainer(
    EncoderDecoderModel(cfg), partitioning.make_mesh(1), partitioning.logical_axis_rules(), lengths
  )
  step, state = finetune_init.initial_state(
    trainer, dataclasses.asdict(cfg), 0, steps, str(model_dir), log=lambda _: None
  )
  return step, state, trainer


def assert_trees_equal(a, b):
  a, b = jax.device_get(a), jax.device_get(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)


def assert_fresh_optimizer(state, trainer):
  assert_trees_equal(state.opt_state, trainer.optimizer.init(state.params))


# -- the initial model ----------------------------------------------------------------------------


def test_init_from_checkpoint_restores_params_and_starts_a_new_optimizer(
  pretrained, seq2seq_data, tmp_path
):
  for initial in (pretrained, pretrained / "checkpoints" / str(PRETRAIN_STEPS)):
    parse(finetune_bindings(tmp_path / "ft", seq2seq_data, 10, initial=initial))
    try:
      step, state, trainer = initial_state(tmp_path / "ft", 10)
    finally:
      gin.clear_config()
    assert step == PRETRAIN_STEPS and int(state.step) == PRETRAIN_STEPS
    assert_trees_equal(state.params, hf_files.restore_params(str(pretrained)).params)
    assert_fresh_optimizer(state, trainer)
  # The task's vocabulary (the pretraining run's) is kept beside the fine-tuning run.
  assert (tmp_path / "ft" / "spiece.model").is_file()


def test_init_from_hf_dir(pretrained, seq2seq_data, tmp_path):
  hf_dir = tmp_path / "hf"
  export_hf.export(str(pretrained), str(hf_dir), log=lambda _: None)
  parse(finetune_bindings(tmp_path / "ft", seq2seq_data, 10, hf_dir=hf_dir))
  try:
    step, state, trainer = initial_state(tmp_path / "ft", 10)
  finally:
    gin.clear_config()
  assert step == 0
  assert_trees_equal(state.params, hf_files.restore_params(str(pretrained)).params)
  assert_fresh_optimizer(state, trainer)


def test_model_gin_that_differs_from_the_initial_model_names_both(
  pretrained, seq2seq_data, tmp_path
):
  bindings = finetune_bindings(tmp_path / "ft", seq2seq_data, 10, initial=pretrained)
  bindings[0] = "model_config.name = 't5-efficient-tiny-dm64-ff256-nh2-kv32-nl2'"
  parse(bindings)
  try:
    with pytest.raises(UserError, match=r"d_ff=128, the model gin has 256"):
      initial_state(tmp_path / "ft", 10)
    with pytest.raises(UserError, match="TRAIN_STEPS=4 is not past"):
      gin.clear_config()
      parse(finetune_bindings(tmp_path / "ft", seq2seq_data, 4, initial=pretrained))
      initial_state(tmp_path / "ft", 4)
  finally:
    gin.clear_config()


# -- training, resumption, decoding eval ----------------------------------------------------------


def train_in_process(bindings, stop_at_step=None):
  parse(bindings)
  try:
    return training.train(stop_at_step=stop_at_step)
  finally:
    gin.clear_config()


@pytest.mark.slow  # three fine-tuning runs, one of them killed: minutes on a shared 2-core host
def test_sigkill_resume_is_bit_identical_without_the_initial_checkpoint(
  pretrained, seq2seq_data, tmp_path
):
  initial = tmp_path / "initial"
  shutil.copytree(pretrained, initial)
  steps = PRETRAIN_STEPS + 6
  reference = tmp_path / "reference"
  result = train_in_process(finetune_bindings(reference, seq2seq_data, steps, initial=initial))
  assert result["step"] == steps and 0.0 <= result["eval_exact_match"] <= 1.0

  killed = tmp_path / "killed"
  bindings = finetune_bindings(killed, seq2seq_data, steps, initial=initial)
  cmd = [
    sys.executable,
    "-m",
    "t5x_lite.train",
    "--gin_file=runs/finetune.gin",
    *[f"--gin_bindings={b}" for b in bindings],
  ]
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  try:
    while not (killed / "checkpoints" / str(PRETRAIN_STEPS + 2)).is_dir():
      assert proc.poll() is None and time.time() < deadline, "no checkpoint of its own"
      time.sleep(0.2)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  shutil.rmtree(initial)  # a resume must not need the initial model any more
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "resuming " in out.stdout and "fine-tuning from" not in out.stdout
  assert_trees_equal(
    hf_files.restore_params(str(killed)).params, hf_files.restore_params(str(reference)).params
  )

  # Decoding eval: exact match logged at each eval, predictions equal infer's on the same inputs.
  rows = [json.loads(l) for l in (reference / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if "eval_exact_match" in r]
  assert [r["step"] for r in evals] == [
    PRETRAIN_STEPS,
    PRETRAIN_STEPS + 2,
    PRETRAIN_STEPS + 4,
    steps,
  ]
  predictions = [
    json.loads(l) for l in (reference / "predictions" / f"{steps}.jsonl").read_text().splitlines()
  ]
  assert len(predictions) == 16
  parse(finetune_bindings(reference, seq2seq_data, steps))
  try:
    lengths = {"inputs": 16, "targets": 8}
    ds = registry.refresh("seq2seq_files").get_dataset(
      lengths, split="validation", shuffle=False, num_epochs=1
    )
    inputs = [ex["inputs"].tolist() for ex in ds.as_numpy_iterator()]
    vocab = pipeline.get_vocabulary("seq2seq_files")
  finally:
    gin.clear_config()
  decoder = infer.Decoder(str(reference))
  outputs = decoder.generate(inputs, decoder.default_max_decode_length())
  assert [p["prediction"] for p in predictions] == [vocab.decode(o) for o in outputs]
  matches = sum(p["prediction"] == p["target"] for p in predictions)
  assert evals[-1]["eval_exact_match"] == matches / len(predictions)


# -- seq2seq files --------------------------------------------------------------------------------


def write_lines(path, lines, compress=False):
  data = "".join(line + "\n" for line in lines).encode()
  if compress:
    path.write_bytes(gzip.compress(data))
  else:
    path.write_bytes(data)
  return path


def read_all(path):
  ds = seq2seq_sources.read_examples(str(path), seq2seq_sources.file_format(str(path)))
  return [(ex["inputs"].decode(), ex["targets"].decode()) for ex in ds.as_numpy_iterator()]


@pytest.mark.parametrize("compress", [False, True])
def test_tsv_and_jsonl_skip_and_count_malformed_rows(tmp_path, compress):
  gz = ".gz" if compress else ""
  tsv = write_lines(
    tmp_path / f"a.tsv{gz}",
    [
      "translate: one\tuno",
      "three\tcolumns\there",
      "no tab at all",
      "",
      "empty target\t",
      "caf\u00e9 \\n\tkept as is",
    ],
    compress,
  )
  jsonl = write_lines(
    tmp_path / f"b.jsonl{gz}",
    [
      json.dumps({"inputs": 'q: "quoted"', "targets": "a\nb"}),
      '{"inputs": "broken",',
      json.dumps({"inputs": "no targets"}),
      json.dumps({"inputs": 3, "targets": "x"}),
      "   ",
      json.dumps({"targets": "t", "inputs": "order does not matter"}),
    ],
    compress,
  )
  assert read_all(tsv) == [("translate: one", "uno"), ("caf\u00e9 \\n", "kept as is")]
  assert read_all(jsonl) == [('q: "quoted"', "a\nb"), ("order does not matter", "t")]
  source = seq2seq_sources.Seq2SeqFiles({"train": f"{tsv},{jsonl}", "validation": None})
  assert seq2seq_sources.row_stats(source, "train") == {
    "examples": 4,
    "malformed_rows_skipped": 6,
    "blank_lines": 2,
    "files": 2,
  }


def test_empty_unreadable_or_missing_files_are_one_line_errors(tmp_path):
  empty = write_lines(tmp_path / "empty.tsv", ["", "  "])
  bad_gzip = tmp_path / "bad.tsv.gz"
  bad_gzip.write_bytes(b"not gzip at all")
  for pattern, message in (
    (empty, "is empty"),
    (bad_gzip, "cannot read"),
    (tmp_path / "none*.tsv", "no files match"),
    (write_lines(tmp_path / "x.csv", ["a,b"]), "unknown seq2seq file type"),
  ):
    source = seq2seq_sources.Seq2SeqFiles({"train": str(pattern), "validation": None})
    with pytest.raises(UserError, match=message):
      source.check_files()


def test_inspect_data_stats_shows_skipped_rows(pretrained, tmp_path):
  train = write_lines(tmp_path / "t.jsonl", [json.dumps({"inputs": "a", "targets": "b"}), "{"])
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "t5x_lite.inspect_data",
      "--gin_file=runs/finetune.gin",
      "--stats",
      f"--gin.FINETUNE_TRAIN_FILES='{train}'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{pretrained}'",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  stats = json.loads(out.stdout.strip().splitlines()[-1])
  assert (stats["task"], stats["examples"], stats["malformed_rows_skipped"]) == (
    "seq2seq_files",
    1,
    1,
  )


# -- the demo -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_quickstart_finetune_demo_end_to_end(tmp_path):
  """The two documented commands with few steps: pretrain, then fine-tune, evaluate, export."""
  base, tuned = tmp_path / "qs", tmp_path / "qs-finetuned"
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "t5x_lite.quickstart",
      f"--model_dir={base}",
      "--gin.TRAIN_STEPS=4",
      "--gin.EVAL_PERIOD=4",
    ],
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "t5x_lite.quickstart",
      "--finetune",
      f"--model_dir={base}",
      f"--finetune_dir={tuned}",
      "--gin.TRAIN_STEPS=8",
      "--gin.EVAL_PERIOD=4",
      "--gin.CHECKPOINT_PERIOD=4",
    ],
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  rows = [json.loads(l) for l in (tuned / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "eval_exact_match" in r] == [4, 8]
  assert (tuned / "predictions" / "8.jsonl").is_file()
  assert (tuned / "hf" / "model.safetensors").is_file()
  assert "exact match" in out.stdout


def test_demo_examples_double_one_word_and_target_it():
  """Each demo input is a corpus phrase with one word written twice; the target is that word."""
  import random

  from t5x_lite.data import finetune_demo

  runs = [d.split() for d in testing.make_documents(50, seed=7, min_words=6, max_words=12)]
  rows = finetune_demo._examples(runs, 100, random.Random(0))
  assert len(rows) == 100 and len({inputs for inputs, _ in rows}) == 100
  phrases = {" ".join(run[i : i + n]) for run in runs for n in (3, 4, 5) for i in range(len(run))}
  for inputs, target in rows:
    assert inputs.startswith(finetune_demo.PREFIX)
    words = inputs[len(finetune_demo.PREFIX) :].split()
    doubled = [i for i in range(len(words) - 1) if words[i] == words[i + 1]]
    assert len(doubled) == 1 and words[doubled[0]] == target
    assert " ".join(words[: doubled[0]] + words[doubled[0] + 1 :]) in phrases
