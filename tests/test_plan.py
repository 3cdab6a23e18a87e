"""`python -m t5x_lite.plan`: a small model compiled for a TPU v4 slice that is not attached."""

import json
import os
import subprocess
import sys

import pytest

from t5x_lite import plan

TPU_DEPS = os.path.join(plan.deps_dir("tpu"), ".installed")
SMALL = [
  "--gin_file=models/t5_efficient_tiny.gin",
  "--gin_file=runs/pretrain.gin",
  "--gin.model_config.name='t5-efficient-tiny-dm64-ff128-nh2-kv32-nl2'",
  "--gin.model_config.vocab_size=256",
  "--gin.BATCH_SIZE=16",
  "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
]


def run_plan(*args, env_extra=None):
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  env.update(env_extra or {})
  return subprocess.run(
    [sys.executable, "-m", "t5x_lite.plan", *args],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )


@pytest.mark.skipif(
  not os.path.exists(TPU_DEPS),
  reason="the TPU compiler is not installed (`make plan-deps-tpu`; `make test` does it)",
)
def test_plan_and_sweep_for_tpu_v4():
  proc = run_plan(*SMALL, "--target=v4-8", "--sweep", "--remat_policies=none,full")
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["target"] == "v4-8"
  assert result["mesh"] == {"data": 8, "model": 1}
  per_device = result["per_device_bytes"]
  assert set(per_device) == {"params", "opt_state", "batch", "temp", "total"}
  assert per_device["total"] >= per_device["params"] + per_device["temp"] > 0
  # libtpu's own peak (its buffer assignment) holds the state (for a program this small, also
  # fixed buffers that make it exceed the total).
  assert result["peak_bytes"] > per_device["params"]
  # The parameters are replicated over data: each device holds all of them (float32).
  assert per_device["params"] == 4 * _num_params()
  assert result["device_bytes"] == plan.TARGETS["v4-8"].device_bytes
  assert result["fits"] is True
  assert result["train_flops_per_step"] > 0 and result["compile_s"] > 0

  options = result["options"]
  # Cheapest first: full remat recomputes the whole forward pass (XLA counts ~+30% FLOPs).
  assert [o["remat_policy"] for o in options] == ["none", "full"]
  assert options[0]["flops_overhead"] == 0.0 < 0.1 < options[1]["flops_overhead"]
  for option in options:
    assert option["fits"] and option["num_microbatches"] == 1 and option["target"] == "v4-8"


def test_unknown_target_and_missing_gin_are_one_line_errors():
  proc = run_plan(*SMALL, "--target=v9-8")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "v4-8" in proc.stderr
  proc = run_plan("--target=v4-8")
  assert proc.returncode == 2 and "--gin_file" in proc.stderr


def test_missing_compiler_names_make_plan_deps(tmp_path):
  proc = run_plan(*SMALL, "--target=h100", env_extra={"T5X_LITE_PLAN_DEPS_DIR": str(tmp_path)})
  assert proc.returncode == 2
  assert len(proc.stderr.strip().splitlines()) == 1 and "make plan-deps" in proc.stderr


def _num_params():
  import dataclasses

  from t5x_lite import config, models

  cfg = dataclasses.replace(
    config.resolve_model_name("t5-efficient-tiny-dm64-ff128-nh2-kv32-nl2"), vocab_size=256
  )
  return models.num_params(cfg)
