"""Numbers a user reads: compile time apart from step times, MFU against a stable CPU peak."""

import json

import gin
import jax
import pytest

import tasks  # noqa: F401
from t5x_lite import flops, gin_utils, training
from t5x_lite.data import testing


@pytest.fixture
def peak_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("T5X_LITE_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(flops, "_measured_cpu_peak", None)
  return tmp_path / "cache" / "cpu_peak_flops.json"


def test_cpu_peak_is_the_best_seen_on_this_host_kept_with_its_date(peak_cache, monkeypatch):
  first = flops.cpu_host_peak_flops()
  entry = json.loads(peak_cache.read_text())[flops._host_key()]
  assert entry["flops_per_s"] == first > 0 and len(entry["date"]) == 10
  # A later process on a busier host measures less: the figure stays.
  monkeypatch.setattr(flops, "measure_cpu_matmul_flops", lambda: first / 3)
  assert flops.cpu_host_peak_flops() == first
  # One on an idler host measures more: the figure rises, and stays there.
  monkeypatch.setattr(flops, "measure_cpu_matmul_flops", lambda: first * 2)
  assert flops.cpu_host_peak_flops() == first * 2
  monkeypatch.setattr(flops, "measure_cpu_matmul_flops", lambda: first)
  assert flops.cpu_host_peak_flops() == first * 2


def test_mfu_never_exceeds_one(peak_cache):
  peak = flops.peak_flops_per_device()
  n = jax.device_count()
  mfu, same = flops.utilization(0.5 * peak * n, peak, n)
  assert mfu == pytest.approx(0.5) and same == peak
  # Faster than the cached figure: it was measured under load, so it is raised to the run's rate.
  mfu, raised = flops.utilization(2.0 * peak * n, peak, n)
  assert mfu == 1.0 and raised == pytest.approx(2.0 * peak)
  assert flops.cpu_host_peak_flops() == pytest.approx(2.0 * peak * len(jax.local_devices()))
  # A peak the user gave is clipped against, never rewritten.
  mfu, given = flops.utilization(3.0 * peak * n, peak, n, cached_cpu_peak=False)
  assert mfu == 1.0 and given == peak


def test_compile_time_is_reported_apart(tmp_path, peak_cache, capsys):
  docs = testing.make_documents(120, seed=4, max_words=60)
  bindings = [
      "model_config.name = 't5-efficient-tiny-dm64-ff128-nh2-kv32-nl2'",
      "model_config.vocab_size = 256", "MIXTURE_OR_TASK_NAME = 'text_span_corruption'",
      "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}", "BATCH_SIZE = 8",
      "train.eval_steps = 1", "train.log_period = 3", "TRAIN_STEPS = 6",
      "CHECKPOINT_PERIOD = 6", "EVAL_PERIOD = 6", f"MODEL_DIR = '{tmp_path / 'run'}'",
      f"text_corpus.train_files = '{testing.write_text_shards(tmp_path, 'train', docs[:100], 1)}'",
      f"text_corpus.validation_files = '{testing.write_text_shards(tmp_path, 'val', docs[100:], 1)}'",
      f"task_vocabulary.path = '{testing.train_tiny_vocab(tmp_path, vocab_size=100)}'"]
  gin.clear_config()
  try:
    gin_utils.parse_gin(["runs/quickstart.gin"], bindings)
    training.train()
  finally:
    gin.clear_config()
  out = capsys.readouterr().out
  assert "compiled the train step in" in out
  rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == [3, 6]
  compile_s = train_rows[0]["compile_s"]
  assert "compile_s" not in train_rows[1]
  # The first window (steps 2-3) holds no compilation: its steps are as fast as the second's,
  # and far faster than the first step.
  assert train_rows[0]["step_time_s"] < compile_s / 2
  assert train_rows[0]["step_time_s"] < 3 * train_rows[1]["step_time_s"]
  assert all(0 < r["mfu"] <= 1 for r in train_rows)
