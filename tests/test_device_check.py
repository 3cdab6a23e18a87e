"""benchmarks/device_check.py at CPU shapes: the script a lent accelerator runs stays working.

Prepared here (TF writes the ready-made examples), run where TF, seqio and TFDS cannot be
imported: synthetic throughput, a SIGKILLed and resumed run on the ready-made examples with
equal losses, an export whose greedy tokens in transformers equal infer's."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = str(REPO / "benchmarks" / "device_check.py")


@pytest.mark.slow  # ~4 minutes on a shared 2-core host
@pytest.mark.ci
def test_device_check_runs_end_to_end_at_cpu_shapes(tmp_path):
  data, report = tmp_path / "data", tmp_path / "report.json"
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  for args in (["prepare", "--small"], ["run", "--small", "--refuse_tf", f"--out={report}"]):
    done = subprocess.run(
      [sys.executable, SCRIPT, *args, f"--dir={data}"],
      capture_output=True,
      text=True,
      timeout=1200,
      env=env,
      cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  result = json.loads(report.read_text())
  (speed,) = result["throughput"]
  assert speed["step_time_s"] > 0 and speed["tokens_per_s"] > 0 and 0 < speed["mfu"] < 1
  resume = result["resume"]
  assert resume["loss_falls"] and resume["resumed"].startswith("resuming")
  assert resume["steps_compared"] >= 3 and resume["losses_equal"]
  export = result["export"]
  assert export["exported"] and export["same_input_ids"] and export["same_greedy_tokens"]
  assert "transformers' greedy tokens equal infer's" in done.stdout
