"""The TF-free sources: synthetic batches and ready-made examples (layout, determinism, any
process count, the one-line refusals) and the writer (kept files, reruns, extension)."""

import json
import subprocess
import sys

import gin
import numpy as np
import pytest

from t5x_lite.data import batches, ready_made, span_lengths, synthetic
from t5x_lite.errors import UserError
from t5x_lite.tokens import EOS_ID

LENGTHS = {"inputs": 512, "targets": 114}


def test_synthetic_examples_have_the_span_corruption_layout():
  ex = synthetic.example(0, 0, 7, LENGTHS, 32100, 0.15, 3.0)
  inputs, targets = ex["encoder_input_tokens"], ex["decoder_target_tokens"]
  # 568 raw tokens: 85 noise tokens in 28 spans, so both features are exactly full.
  assert span_lengths.raw_length_for(512, 114) == 568
  assert (inputs > 0).all() and (targets > 0).all()
  assert inputs[-1] == targets[-1] == EOS_ID
  sentinels = np.arange(32099, 32099 - 28, -1)
  assert list(inputs[inputs >= 32000]) == list(sentinels)
  assert list(targets[targets >= 32000]) == list(sentinels)
  assert targets[0] == 32099  # targets start with the first span's sentinel
  assert (ex["decoder_input_tokens"][1:] == targets[:-1]).all() and ex["decoder_input_tokens"][
    0
  ] == 0
  assert (ex["decoder_loss_weights"] == 1).all()
  # Interleaving inputs and targets gives a sequence of 568 ordinary pieces back.
  spans = np.split(targets[:-1], np.flatnonzero(targets[:-1] >= 32000)[1:])
  restored = []
  for token in inputs[:-1]:
    restored.extend(spans.pop(0)[1:] if token >= 32000 else [token])
  assert len(restored) == 568 and max(restored) < 32000 and min(restored) >= 3


def test_synthetic_batches_depend_on_seed_and_step_only():
  def rows(process, count, seed=0, steps=2):
    size = 8 // count
    it = synthetic.train_batches(
      LENGTHS, 8, range(process * size, (process + 1) * size), seed, 32100
    )
    return [next(it)["encoder_input_tokens"] for _ in range(steps)]

  one = rows(0, 1)
  two = [np.concatenate(pair) for pair in zip(rows(0, 2), rows(1, 2))]
  assert all((a == b).all() for a, b in zip(one, two))
  assert not (rows(0, 1, seed=1)[0] == one[0]).all()
  assert not (one[0] == one[1]).all()


def test_synthetic_short_lengths_and_vocabulary():
  ex = synthetic.example(0, 0, 0, {"inputs": 4, "targets": 1}, 256, 0.15, 3.0)
  assert ex["encoder_input_tokens"][-1] == EOS_ID and ex["decoder_target_tokens"][0] == EOS_ID
  assert synthetic.vocab_size(4224) == 4224 and synthetic.vocab_size(32128) == 32100
  with gin.unlock_config():
    gin.bind_parameter("synthetic.vocab_size", 50)
  try:
    with pytest.raises(UserError, match="synthetic.vocab_size must be an integer >= 104"):
      synthetic.vocab_size(32128)
  finally:
    gin.clear_config()


def fake_examples(directory, steps=6, batch=4, blocks=((0, 2), (2, 4)), chunk_steps=4):
  """A small ready-made directory whose token at (step, row) is step * 100 + row."""
  record = {
    "format": ready_made.FORMAT,
    "complete": True,
    "task": "t",
    "feature_lengths": {"inputs": 3, "targets": 2},
    "batch_size": batch,
    "steps": steps,
    "eval_steps": 1,
    "chunk_steps": chunk_steps,
    "row_blocks": [list(b) for b in blocks],
    "features": {"encoder_input_tokens": {"dtype": "uint16"}},
    "vocab_size": 32100,
    "vocabulary_sha256": None,
    "data_settings": {"mixture_or_task_name": "t", "batch_size": batch, "logical_shards": 2},
    "examples_id": "x",
  }
  for k in range(-(-steps // chunk_steps)):
    for a, b in blocks:
      s = np.arange(k * chunk_steps, min((k + 1) * chunk_steps, steps))
      values = (s[:, None] * 100 + np.arange(a, b)[None, :])[..., None].repeat(3, -1)
      name = ready_made.train_file("encoder_input_tokens", k, range(a, b))
      ready_made.write_array(str(directory), name, values.astype(np.uint16))
  for a, b in blocks:
    name = ready_made.validation_file("encoder_input_tokens", range(a, b))
    ready_made.write_array(str(directory), name, np.full((1, b - a, 3), 7, np.uint16))
  (directory / ready_made.INDEX_FILE).write_text(json.dumps(record))
  return ready_made.read_index(str(directory))


def test_ready_made_reads_by_global_example_index(tmp_path):
  index = fake_examples(tmp_path)
  assert (
    ready_made.file_names(index.record)[0]
    == "train/encoder_input_tokens.chunk00000.rows00000-00002.npy"
  )

  def firsts(batch, rows, steps):
    it = ready_made.train_batches(index, batch, rows)
    return [list(next(it)["encoder_input_tokens"][:, 0]) for _ in range(steps)]

  # One process of batch 4, or two of 2 rows each: the same examples, across files and chunks.
  assert firsts(4, range(0, 4), 6)[4] == [400, 401, 402, 403]
  assert firsts(4, range(2, 4), 6)[5] == [502, 503]
  # Another batch size reads the same sequence of examples (global index = step x batch + row).
  assert firsts(8, range(0, 8), 3)[1] == [200, 201, 202, 203, 300, 301, 302, 303]
  it = ready_made.train_batches(index, 4, range(4))
  it.seek(6)
  with pytest.raises(UserError, match="end at example 24"):
    next(it)
  (evals,) = list(ready_made.eval_batches(index, 4, range(4), 1))
  assert (evals["encoder_input_tokens"] == 7).all() and evals["encoder_input_tokens"].shape == (
    4,
    3,
  )


def test_ready_made_refusals(tmp_path):
  index = fake_examples(tmp_path)
  lengths = {"inputs": 3, "targets": 2}
  ready_made.check_run(index, "t", lengths, 4, 6)
  for args, message in (
    (("u", lengths, 4, 6), "made from task 't', this run names 'u'"),
    (("t", {"inputs": 4, "targets": 2}, 4, 6), "have feature lengths"),
    (("t", lengths, 4, 7), "hold 6 steps of batch 4 \\(24 examples\\), this run needs 28"),
  ):
    with pytest.raises(UserError, match=message):
      ready_made.check_run(index, *args)
  with pytest.raises(UserError, match="set train.eval_steps <= 1"):
    ready_made.eval_batches(index, 4, range(4), 2)
  record = json.loads((tmp_path / ready_made.INDEX_FILE).read_text())
  (tmp_path / ready_made.INDEX_FILE).write_text(json.dumps({**record, "complete": False}))
  with pytest.raises(UserError, match="are incomplete"):
    ready_made.read_index(str(tmp_path))
  with pytest.raises(UserError, match="holds no examples.json"):
    ready_made.read_index(str(tmp_path / "train"))
  vocab = tmp_path / "other.model"
  vocab.write_bytes(b"x")
  ready_made.check_vocabulary(index, str(vocab))  # the files record no vocabulary: nothing to say
  with pytest.raises(UserError, match="another vocabulary"):
    ready_made.check_vocabulary(
      ready_made.Index(index.directory, {**index.record, "vocabulary_sha256": "0" * 64}), str(vocab)
    )


def test_the_source_follows_gin(tmp_path):
  fake_examples(tmp_path)
  assert batches.source_kind("c4_span_corruption") == batches.TASK
  assert batches.source_kind("synthetic") == batches.SYNTHETIC
  with gin.unlock_config():
    gin.bind_parameter("ready_made.directory", str(tmp_path))
  try:
    assert batches.source_kind("t") == batches.READY_MADE and not batches.needs_tasks("t")
    it = batches.train_iterator("t", {"inputs": 3, "targets": 2}, 4, end_step=6)
    assert next(it)["encoder_input_tokens"].dtype == np.int32  # as the pipelines deliver them
    assert batches.data_settings("t", {"inputs": 3, "targets": 2}, 8, 0)["batch_size"] == 8
  finally:
    gin.clear_config()


def test_a_resume_compares_the_examples_like_other_data_settings(tmp_path):
  from t5x_lite import resume_check

  fake_examples(tmp_path)
  lengths = {"inputs": 3, "targets": 2}
  with gin.unlock_config():
    gin.bind_parameter("ready_made.directory", str(tmp_path))
  try:
    settings = resume_check.data_settings("t", lengths, 4, False, 0)
    assert settings["source"] == "ready-made examples" and settings["examples_id"] == "x"
    assert resume_check.data_changes({"data": settings}, settings, None) == []
    other = {**settings, "examples_id": "y"}
    assert resume_check.data_changes({"data": settings}, other, None) == ["examples_id 'x' -> 'y'"]
    # The task's own stream and its ready-made examples are different data positions.
    task = {k: v for k, v in settings.items() if k not in ("source", "examples_id")}
    assert "source None -> 'ready-made examples'" in resume_check.data_changes(
      {"data": task}, settings, None
    )
  finally:
    gin.clear_config()
  synthetic_settings = batches.data_settings("synthetic", lengths, 4, 0, model_vocab_size=256)
  assert synthetic_settings["vocabulary"] == "synthetic 256"
  assert resume_check.data_changes({"data": synthetic_settings}, synthetic_settings, None) == []


@pytest.mark.slow  # writes twice, killed once: a minute on a shared 2-core host
def test_the_writer_keeps_finished_files_and_extends(tiny_corpus, tmp_path):
  out = tmp_path / "examples"
  cmd = [
    sys.executable,
    "-m",
    "t5x_lite.write_examples",
    "--gin_file=runs/quickstart.gin",
    "--gin.MIXTURE_OR_TASK_NAME='text_span_corruption'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
    "--gin.BATCH_SIZE=8",
    "--gin.train.eval_steps=1",
    *tiny_corpus.flags(),
    f"--output_dir={out}",
    "--chunk_steps=2",
  ]
  subprocess.run([*cmd, "--steps=4"], check=True, capture_output=True)
  first = {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.npy")}
  done = subprocess.run([*cmd, "--steps=7"], check=True, capture_output=True, text=True)
  assert "7 steps of batch 8" in done.stdout
  files = {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.npy")}
  assert all(files[name] == mtime for name, mtime in first.items())  # kept, not rewritten
  index = ready_made.read_index(str(out))
  assert index.steps == 7 and len(files) == 4 * 4
  other = subprocess.run([*cmd, "--steps=7", "--gin.BATCH_SIZE=4"], capture_output=True, text=True)
  assert other.returncode == 2 and "holds examples made with other settings" in other.stderr
