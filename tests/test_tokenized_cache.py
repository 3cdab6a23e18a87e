"""Pre-tokenized caches: written in seqio's layout, read back by training as the same examples."""

import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import seqio

from t5x_lite.data import pipeline, registry, testing, tokenized_cache
from t5x_lite.errors import UserError
import t5x_lite.tasks  # noqa: F401  (registers the tasks)

LENGTHS = {"inputs": 32, "targets": 8}
TASK = "jsonl_span_corruption"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  docs = testing.make_documents(120, seed=3, max_words=60)
  return {
    "train": testing.write_jsonl_shards(root, "train", docs[:100], num_shards=3, field="body"),
    "validation": testing.write_jsonl_shards(
      root, "validation", docs[100:], num_shards=1, field="body"
    ),
    "vocab": testing.train_tiny_vocab(root),
  }


@pytest.fixture
def configured(corpus):
  gin.clear_config()
  gin.parse_config(
    [
      f"jsonl_corpus.train_files = '{corpus['train']}'",
      f"jsonl_corpus.validation_files = '{corpus['validation']}'",
      "jsonl_corpus.text_field = 'body'",
      f"task_vocabulary.path = '{corpus['vocab']}'",
    ]
  )
  yield corpus
  gin.clear_config()


def batches(n=1000, **kwargs):
  ds = pipeline.get_dataset(TASK, LENGTHS, "train", 4, shuffle=False, repeat=False, **kwargs)
  return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


def test_cached_pipeline_gives_the_same_batches(configured, tmp_path):
  expected = batches()
  task = registry.refresh(TASK)
  assert tokenized_cache.write_cache(task, str(tmp_path), ["train", "validation"])
  task_dir = tokenized_cache.task_cache_dir(str(tmp_path), TASK)
  with open(os.path.join(task_dir, "stats.train.json")) as f:
    assert json.load(f)["examples"] == 100
  assert len([p for p in os.listdir(task_dir) if p.startswith("train.tfrecord-")]) == 3
  gin.bind_parameter("tokenized_cache.cache_dir", str(tmp_path))
  got = batches()
  assert len(got) == len(expected) > 3
  for a, b in zip(got, expected):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_workers_split_shards_and_the_last_one_completes(configured, tmp_path):
  task = registry.refresh(TASK)
  with pytest.raises(UserError, match="has 3 input files; --num_shards=9"):
    tokenized_cache.write_cache(task, str(tmp_path), ["train"], num_shards=9)
  assert not tokenized_cache.write_cache(task, str(tmp_path), ["train"], worker_id=0, num_workers=2)
  task_dir = tokenized_cache.task_cache_dir(str(tmp_path), TASK)
  assert not os.path.exists(os.path.join(task_dir, "COMPLETED"))
  gin.bind_parameter("tokenized_cache.cache_dir", str(tmp_path))
  with pytest.raises(UserError, match="no completed tokenized cache .*cache_tokenized"):
    batches()
  # A shard left half-written by a killed worker is redone, not read.
  shard_1 = os.path.join(task_dir, "train.tfrecord-00001-of-00003")
  with open(shard_1 + ".incomplete", "wb") as f:
    f.write(b"\x00garbage")
  assert tokenized_cache.write_cache(task, str(tmp_path), ["train"], worker_id=1, num_workers=2)
  assert os.path.exists(shard_1) and not os.path.exists(shard_1 + ".incomplete")
  assert len(batches()) > 3


def test_cache_of_another_vocabulary_is_refused(configured, tmp_path):
  assert tokenized_cache.write_cache(registry.refresh(TASK), str(tmp_path), ["train"])
  other_vocab = testing.train_tiny_vocab(tmp_path / "other", vocab_size=80)
  gin.bind_parameter("task_vocabulary.path", other_vocab)
  gin.bind_parameter("tokenized_cache.cache_dir", str(tmp_path))
  with pytest.raises(UserError, match="another vocabulary"):
    batches()


def test_lost_shard_is_named_and_a_rerun_writes_it_alone(configured, tmp_path):
  task = registry.refresh(TASK)
  assert tokenized_cache.write_cache(task, str(tmp_path), ["train"])
  task_dir = tokenized_cache.task_cache_dir(str(tmp_path), TASK)
  lost = os.path.join(task_dir, "train.tfrecord-00001-of-00003")
  os.remove(lost)
  before = {n: os.stat(os.path.join(task_dir, n)).st_mtime_ns for n in os.listdir(task_dir)}
  gin.bind_parameter("tokenized_cache.cache_dir", str(tmp_path))
  with pytest.raises(UserError) as refused:
    batches()
  message = str(refused.value)
  assert "\n" not in message
  assert message.startswith(
    f"the tokenized cache in {task_dir} is incomplete: train.tfrecord-00001-of-00003 is missing "
    f"or empty; rewrite the missing shards with `"
  )
  assert f"-m t5x_lite.cache_tokenized --task={TASK} --cache_dir={tmp_path}` (same gin" in message
  assert {n: os.stat(os.path.join(task_dir, n)).st_mtime_ns for n in os.listdir(task_dir)} == before
  # What the message says works: the writer redoes that shard alone, then training reads it.
  assert tokenized_cache.write_cache(task, str(tmp_path), ["train"])
  assert os.path.getsize(lost) > 0
  assert all(
    os.stat(os.path.join(task_dir, n)).st_mtime_ns == t
    for n, t in before.items()
    if n.startswith("train.tfrecord-")
  )
  assert len(batches()) > 3


def test_cache_of_another_vocabulary_is_not_completed_again(configured, tmp_path):
  assert tokenized_cache.write_cache(registry.refresh(TASK), str(tmp_path), ["train"])
  task_dir = tokenized_cache.task_cache_dir(str(tmp_path), TASK)
  before = sorted(os.listdir(task_dir))
  gin.bind_parameter("task_vocabulary.path", testing.train_tiny_vocab(tmp_path / "v", 80))
  with pytest.raises(UserError, match=rf"written with another vocabulary .*delete {task_dir}"):
    tokenized_cache.write_cache(registry.refresh(TASK), str(tmp_path), ["train"])
  assert sorted(os.listdir(task_dir)) == before


def test_cache_dir_that_cannot_be_created(configured, tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(UserError, match=r"cache directory .*file/.* cannot be created: .*file is a"):
    tokenized_cache.write_cache(registry.refresh(TASK), str(tmp_path / "file"), ["train"])


def test_cli_writes_a_cache_the_trainer_reads(configured, tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "t5x_lite.cache_tokenized",
    "--splits=train",
    f"--cache_dir={tmp_path}",
    f"--task={TASK}",
    f"--gin.jsonl_corpus.train_files='{configured['train']}'",
    "--gin.jsonl_corpus.text_field='body'",
    f"--gin.task_vocabulary.path='{configured['vocab']}'",
  ]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "complete" in out.stdout
  assert seqio.utils.get_task_dir_from_name(TASK) in os.listdir(tmp_path)
  # The training pipeline, pointed at it, reads the same batches as from the text.
  expected = batches()
  gin.bind_parameter("tokenized_cache.cache_dir", str(tmp_path))
  got = batches()
  assert len(got) == len(expected) > 3
  for a, b in zip(got, expected):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
