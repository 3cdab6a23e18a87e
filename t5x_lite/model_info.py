"""Prints what a model is: `python -m t5x_lite.model_info t5-efficient-tiny-nl32`.

Or from gin: `python -m t5x_lite.model_info --gin_file=models/t5_efficient_base.gin`.
Output is one JSON object: name, dims, num_params, weight memory in float32 and bfloat16,
training and inference FLOPs per token, KV-cache bytes per decoded token, and the HF config.
To measure speed as well: `python -m t5x_lite.efficiency NAME...`.
"""

from t5x_lite import quiet_startup  # noqa: F401  (first: hides native start-up noise)

# isort: split

import argparse
import dataclasses
import json
import sys

from t5x_lite import config, gin_utils
from t5x_lite.errors import UserError, run_main

# Megabytes as the T5-Efficient model cards print them: 10**6 bytes, 4 bytes per parameter in full
# precision and 2 in half (tiny: "62.32 MB in full precision, 31.16 MB in half precision", their
# rounded 15.58M parameters x 4; the exact 15,570,688 give 62.28 MB).
MB = 10**6


def describe(cfg: config.T5Config, input_length: int = 512, target_length: int = 114) -> dict:
  from t5x_lite import models  # Flax: imported when counting, so the CLI starts fast.

  fp32, bf16 = models.weight_bytes(cfg, 4), models.weight_bytes(cfg, 2)
  return {
    "name": cfg.name,
    "num_params": models.num_params(cfg),
    "weight_memory": {
      "float32_bytes": fp32,
      "bfloat16_bytes": bf16,
      "float32_MB": round(fp32 / MB, 2),
      "bfloat16_MB": round(bf16 / MB, 2),
    },
    "flops_per_token": config.flops_per_token(cfg, input_length, target_length),
    "inference_flops_per_token": config.inference_flops_per_token(cfg, input_length, target_length),
    "input_length": input_length,
    "target_length": target_length,
    "flops_formula": config.FLOPS_FORMULA,
    "kv_cache_bytes_per_decoded_token": {
      "float32": config.kv_cache_bytes_per_token(cfg, 4),
      "bfloat16": config.kv_cache_bytes_per_token(cfg, 2),
    },
    "attention": {
      "num_heads": cfg.num_heads,
      "num_kv_heads": cfg.num_kv_heads,
      "tied_key_value": cfg.tied_key_value,
    },
    "dims": dataclasses.asdict(cfg),
    "hf_config": config.hf_config_dict(cfg),
  }


def main(argv=None) -> int:
  files, bindings, rest = gin_utils.split_gin_flags(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(prog="python -m t5x_lite.model_info", description=__doc__)
  parser.add_argument("name", nargs="?", help="model name, e.g. t5-efficient-base-el16-dl8")
  parser.add_argument("--input_length", type=int, default=512)
  parser.add_argument("--target_length", type=int, default=114)
  parser.add_argument(
    "--measure",
    action="store_true",
    help="also measure training and decoding speed on this device (as "
    "`python -m t5x_lite.efficiency NAME` does, with its default settings)",
  )
  args, unknown = parser.parse_known_args(rest)
  if unknown:
    raise UserError(f"unknown arguments: {' '.join(unknown)}")
  if args.input_length <= 0 or args.target_length <= 0:
    raise UserError("--input_length and --target_length must be positive")
  if args.name and (files or bindings):
    raise UserError("give either a model name or gin flags, not both")
  if args.name:
    cfg = config.resolve_model_name(args.name)
  elif files or bindings:
    gin_utils.parse_gin(files, bindings)
    with gin_utils.required_bindings_checked():
      cfg = config.model_config()
  else:
    raise UserError(f"give a model name or --gin_file; names: {config.GRAMMAR}")
  info = describe(cfg, args.input_length, args.target_length)
  if args.measure:
    if not args.name:
      raise UserError("--measure needs a model name")
    from t5x_lite import efficiency

    info["measured"] = efficiency.measure(cfg.name, efficiency.default_settings_for_device())
  print(json.dumps(info, indent=2))
  return 0


if __name__ == "__main__":
  run_main(main)
