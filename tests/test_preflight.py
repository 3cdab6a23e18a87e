"""`python -m t5x_lite.preflight`: the data path read here, the deviceless compile, the rates and
the checkpoint writes a target needs, as verdict lines and one JSON object."""

import json
import os
import subprocess
import sys

import pytest

from t5x_lite import plan, preflight_report

TPU_DEPS = os.path.join(plan.deps_dir("tpu"), ".installed")
CUDA_DEPS = os.path.join(plan.deps_dir("cuda"), ".installed")
KEYS = {"data", "memory", "compile_s", "required_examples_per_s", "checkpoint", "verdicts"}


def preflight(corpus, model_dir, *args):
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "t5x_lite.preflight",
      "--gin_file=models/t5_efficient_tiny.gin",
      "--gin_file=runs/pretrain.gin",
      "--gin.model_config.name='t5-efficient-tiny-dm64-ff128-nh2-kv32-nl2'",
      "--gin.model_config.vocab_size=256",
      "--gin.MIXTURE_OR_TASK_NAME='text_span_corruption'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
      "--gin.BATCH_SIZE=32",
      "--gin.train.num_microbatches=1",
      f"--gin.MODEL_DIR='{model_dir}'",
      *corpus.flags(),
      "--data_seconds=1",
      "--write_mb=8",
      *args,
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.strip().splitlines()
  report = json.loads(lines[-1])
  assert KEYS <= set(report)
  assert lines[:-1] == report["verdicts"]  # one line per verdict, then the JSON object
  return report


@pytest.mark.skipif(not os.path.exists(TPU_DEPS), reason="`make plan-deps-tpu` (make test does)")
def test_v4_32_measures_one_hosts_data_compiles_and_times_checkpoints(tiny_corpus, tmp_path):
  model_dir = tmp_path / "parent" / "run"
  (tmp_path / "parent").mkdir()
  report = preflight(tiny_corpus, model_dir, "--target=v4-32", "--host_cores=2")
  memory, data = report["memory"], report["data"]
  assert memory["fits"] and memory["hosts"] == 4 and report["compile_s"] == memory["compile_s"]
  # One host of four reads 8 of the 32 logical shards (gcd(32, 64)), 8 rows of each batch.
  assert data["logical_shards"] == 8 and data["rows_per_batch"] == 8
  assert data["first_batch_s"] > 0 and data["examples_per_core_s"] > 0
  required = report["required_examples_per_s"]
  # 16 v4 chips at 275 TFLOP/s; each host reads a quarter of the examples.
  assert required["devices"] == 16 and required["hosts"] == 4
  expected = 16 * 275e12 * 0.6 / required["train_flops_per_example"] / 4
  assert required["mfu_60"] == pytest.approx(expected)
  checkpoint = report["checkpoint"]
  assert checkpoint["bytes_per_host"] == checkpoint["state_bytes"] // 4
  assert checkpoint["write_bytes_per_s"] > 0 and checkpoint["seconds_per_save"] > 0
  verdicts = report["verdicts"]
  assert verdicts[0].startswith("fits: ")
  assert any(v.startswith("input-bound below") or v.startswith("data: fed") for v in verdicts)
  assert any(v.startswith("first step after ~") for v in verdicts)
  assert any(v.startswith("checkpoint: a checkpoint writes") for v in verdicts)
  # Nothing is left behind: not the write test file, not MODEL_DIR.
  assert os.listdir(tmp_path / "parent") == []


def test_h100x8_answers_with_the_same_keys(tiny_corpus, tmp_path):
  report = preflight(tiny_corpus, tmp_path, "--target=h100x8", "--skip_data")
  assert report["data"] == {"skipped": True}
  required = report["required_examples_per_s"]
  assert required["devices"] == 8 and required["peak_flops_per_device"] == 989e12
  if os.path.exists(CUDA_DEPS):
    assert report["memory"]["fits"]
  else:  # the CUDA compiler (5 GB) is not installed by `make test`: said in one line
    assert "make plan-deps" in report["memory"]["error"]
    assert report["verdicts"][0].startswith("memory: not compiled for h100x8: ")


REPORT = {
  "target": "v4-32",
  "data": {
    "logical_shards": 16,
    "first_batch_s": 12.0,
    "examples_per_core_s": 1000.0,
    "resident_bytes": 2e9,
  },
  "memory": {
    "fits": True,
    "peak_bytes": 9e9,
    "device_bytes": 16e9,
    "remat_policy": "lean",
    "num_microbatches": 2,
    "compile_s": 80.0,
  },
  "required_examples_per_s": {"mfu_40": 20_000.0, "mfu_60": 30_000.0},
  "checkpoint": {
    "bytes_per_host": 2e9,
    "write_bytes_per_s": 100e6,
    "seconds_per_save": 20.0,
    "share_of_period_mfu_40": 0.2,
    "share_of_period_mfu_60": 0.3,
    "period_steps": 5000,
  },
}


def with_(section: str, **values) -> dict:
  return {**REPORT, section: {**REPORT[section], **values}}


def test_verdicts_name_the_numbers_and_the_way_out():
  lines = preflight_report.verdicts(REPORT, host_cores=24)
  assert lines[0] == (
    "fits: 9.0 GB of 16.0 GB per device (remat 'lean', 2 microbatches; deviceless compile, "
    "80.0 s here)"
  )
  # 24 cores x 1,000 examples per core-second feed 24,000/s: 48% MFU.
  assert lines[1].startswith("input-bound below 48% MFU with 24 cores per host")
  assert "cache_tokenized" in lines[1]
  assert lines[2] == (
    "data: one host's 16 logical shards start in 12 s and hold 2.00 GB of host memory"
  )
  assert lines[3].startswith("first step after ~92 s")
  assert "20.0 s at the 100 MB/s measured in MODEL_DIR: 20.0% / 30.0%" in lines[4]
  assert preflight_report.verdicts(REPORT, host_cores=40)[1].startswith("data: fed")


def test_verdicts_for_what_does_not_fit_or_start():
  too_big = with_("memory", fits=False, peak_bytes=None)
  assert preflight_report.verdicts(too_big, None)[0].startswith(
    "does not fit: a device needs more than it has of 16.0 GB"
  )
  no_start = with_("data", error="4 processes cannot share the 2 logical data shards")
  no_start["data"] = {"error": no_start["data"]["error"]}
  lines = preflight_report.verdicts(no_start, None)
  assert "does not start: 4 processes cannot share the 2 logical data shards" in lines
  assert not any(l.startswith("first step") for l in lines)
  slow = with_("checkpoint", share_of_period_mfu_60=0.8)
  assert "raise CHECKPOINT_PERIOD" in preflight_report.verdicts(slow, None)[-1]
