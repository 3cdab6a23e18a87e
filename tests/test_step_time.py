"""Numbers a user reads: MFU against a stable CPU peak, never above 100% (compile time apart
from step times is checked by the training run of test_tfds_c4)."""

import json

import jax
import pytest

from t5x_lite import flops


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
