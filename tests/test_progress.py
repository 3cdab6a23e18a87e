"""Progress lines of the long one-off jobs: what they say, and what a rerun of the cache writer
says about the shards it skips."""

import gin

from t5x_lite import progress
from t5x_lite.data import registry, testing, tokenized_cache
import t5x_lite.tasks  # noqa: F401  (registers the tasks)


def test_progress_lines_have_rate_and_eta(monkeypatch):
  clock = iter([0.0, 10.0, 10.0, 30.0, 30.0, 30.0])
  monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
  lines = []
  bar = progress.Progress(
    "reading", 4_000_000, every_s=5, log=lines.append, amount=progress.format_bytes
  )
  bar.advance(1_000_000)  # t=10s: a line
  bar.advance(1_000_000, "two files")  # t=30s: a line
  bar.finish("done")
  assert lines == [
    "reading: 1.0 MB/4.0 MB (25%), 100.0 KB/s, ETA 30s",
    "reading: 2.0 MB/4.0 MB (50%), 66.7 KB/s, ETA 30s; two files",
    "reading: 2.0 MB in 30s; done",
  ]
  assert progress.format_duration(3725) == "1h02m" and progress.format_duration(75) == "1m15s"


def test_a_cache_rerun_says_which_shards_it_skips(tmp_path):
  docs = testing.make_documents(60, seed=3, max_words=40)
  gin.clear_config()
  gin.parse_config(
    [
      f"jsonl_corpus.train_files = '{testing.write_jsonl_shards(tmp_path, 'train', docs[:50], 3)}'",
      f"jsonl_corpus.validation_files = '{testing.write_jsonl_shards(tmp_path, 'val', docs[50:], 1)}'",
      f"task_vocabulary.path = '{testing.train_tiny_vocab(tmp_path)}'",
    ]
  )
  try:
    task = registry.refresh("jsonl_span_corruption")
    first, again = [], []
    # Worker 0 of 2 writes shards 1 and 3; the rerun finds them and writes nothing.
    tokenized_cache.write_cache(task, str(tmp_path / "cache"), ["train"], None, 0, 2, first.append)
    tokenized_cache.write_cache(task, str(tmp_path / "cache"), ["train"], None, 0, 2, again.append)
  finally:
    gin.clear_config()
  assert len(first) == 2
  assert first[0].startswith("jsonl_span_corruption train: 1/2 shards (50%), ")
  assert "ETA" in first[0] and "; shard 1/3: " in first[0]
  assert first[1].startswith("jsonl_span_corruption train: 2/2 shards (100%), ")
  assert "; shard 3/3: " in first[1]
  assert again == [
    "jsonl_span_corruption train: 2 of this worker's 2 shards are already written, "
    "skipping 1, 3 (of 3)"
  ]
