"""The paper's three efficiency numbers: model_info's computed ones and the efficiency command."""

import csv
import json
import subprocess
import sys

import pytest

from t5x_lite import config, efficiency, model_info, models
from t5x_lite.errors import UserError

# Two names of the tiny family, shrunk so that both compile in seconds.
NAMES = [
  "t5-efficient-tiny-dm64-ff128-nh4-kv16-nl2",
  "t5-efficient-tiny-dm64-ff128-nh4-kv16-nl2-sh-skv",
]


def test_model_info_reports_the_three_numbers(capsys):
  model_info.main(["t5-efficient-tiny-sh", "--input_length=128", "--target_length=32"])
  info = json.loads(capsys.readouterr().out)
  tiny_sh = config.resolve_model_name("t5-efficient-tiny-sh")
  assert info["num_params"] == 14_391_040 == config.params_by_formula(tiny_sh)
  assert info["weight_memory"] == {
    "float32_bytes": 4 * 14_391_040,
    "bfloat16_bytes": 2 * 14_391_040,
    "float32_MB": 57.56,
    "bfloat16_MB": 28.78,
  }
  assert info["inference_flops_per_token"] * 3 == pytest.approx(info["flops_per_token"])
  assert info["flops_per_token"] == config.flops_per_token(tiny_sh, 128, 32)
  # 4 decoder layers x (key + value) x one shared head of 64.
  assert info["kv_cache_bytes_per_decoded_token"] == {
    "float32": 4 * 2 * 64 * 4,
    "bfloat16": 4 * 2 * 64 * 2,
  }
  assert info["attention"] == {"num_heads": 4, "num_kv_heads": 1, "tied_key_value": False}


def test_model_cards_megabytes():
  info = model_info.describe(config.resolve_model_name("t5-efficient-tiny"))
  # The card's "62.32 MB / 31.16 MB" is its rounded 15.58M parameters x 4 and x 2 bytes, in 10^6 bytes.
  assert (info["weight_memory"]["float32_MB"], info["weight_memory"]["bfloat16_MB"]) == (
    62.28,
    31.14,
  )


def test_fewer_flops_with_shared_or_tied_key_values():
  flops = {
    s: config.flops_per_token(config.resolve_model_name("t5-efficient-tiny" + s))
    for s in ("", "-skv", "-sh", "-sh-skv")
  }
  assert flops[""] > flops["-skv"] > flops["-sh"] > flops["-sh-skv"]
  # -skv saves one d_model x inner_dim projection per attention over every token it sees:
  # per example 3 x 2 x 256 x 256 x (4 x 512 encoder + 4 x 114 self + 4 x 512 cross) FLOPs.
  saved = 3 * 2 * 256 * 256 * (4 * 512 + 4 * 114 + 4 * 512) / (512 + 114)
  assert flops[""] - flops["-skv"] == pytest.approx(saved)


def test_pareto_front():
  # (cost, speed): the second is beaten by the first (cheaper and faster), the fourth ties on
  # cost with the third but is slower.
  points = [(1.0, 10.0), (2.0, 9.0), (3.0, 12.0), (3.0, 11.0), (0.5, 2.0)]
  assert efficiency.pareto_front(points) == [4, 0, 2]


def test_bad_arguments_are_one_line_errors(tmp_path):
  with pytest.raises(UserError, match=r"bad suffix 'sh2'.*-sh / -skv"):
    efficiency.main(["t5-efficient-tiny", "t5-efficient-tiny-sh2"])
  with pytest.raises(UserError, match=r"--plot must name a \.png"):
    efficiency.main(["t5-efficient-tiny", f"--plot={tmp_path / 'x.pdf'}"])
  with pytest.raises(UserError, match="--steps must be positive"):
    efficiency.main(["t5-efficient-tiny", "--steps=0"])
  with pytest.raises(UserError, match="multiple of the 8 devices"):
    efficiency.main([NAMES[0], "--batch_size=4", "--input_length=8", "--target_length=4"])


def test_command_end_to_end_writes_csv_and_png(tmp_path):
  csv_path, png_path = tmp_path / "eff.csv", tmp_path / "eff.png"
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "t5x_lite.efficiency",
      *NAMES,
      "--input_length=16",
      "--target_length=4",
      "--batch_size=8",
      "--decode_length=3",
      "--steps=1",
      "--decode_repeats=1",
      "--markdown",
      f"--csv={csv_path}",
      f"--plot={png_path}",
    ],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  table = [line for line in done.stdout.splitlines() if line.startswith("|")]
  assert table[0].startswith("| model | params |") and len(table) == 2 + len(NAMES)
  with open(csv_path, newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["name"] for r in rows] == NAMES
  for row in rows:
    cfg = config.resolve_model_name(row["name"])
    assert int(row["num_params"]) == models.num_params(cfg)
    assert int(row["kv_cache_bytes_per_token"]) == config.kv_cache_bytes_per_token(cfg, 4)
    assert row["device"] == "8x cpu" and row["dtype"] == "float32"
    for field in ("step_ms", "examples_per_s", "tokens_per_s", "decode_tokens_per_s"):
      assert float(row[field]) > 0, field
    assert float(row["tokens_per_s"]) == pytest.approx(float(row["examples_per_s"]) * 20, rel=0.02)
  assert int(rows[1]["num_params"]) < int(rows[0]["num_params"])
  assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
