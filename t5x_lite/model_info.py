"""Prints what a model is: `python -m t5x_lite.model_info t5-efficient-tiny-nl32`.

Or from gin: `python -m t5x_lite.model_info --gin_file=models/t5_efficient_base.gin`.
Output is one JSON object: name, dims, num_params, training FLOPs per token and the HF config.
"""

import argparse
import dataclasses
import json
import sys

from t5x_lite import config, gin_utils
from t5x_lite.errors import UserError, run_main


def describe(cfg: config.T5Config, input_length: int = 512, target_length: int = 114) -> dict:
  return {
      "name": cfg.name,
      "num_params": config.num_params(cfg),
      "flops_per_token": config.flops_per_token(cfg, input_length, target_length),
      "input_length": input_length,
      "target_length": target_length,
      "flops_formula": config.FLOPS_FORMULA,
      "dims": dataclasses.asdict(cfg),
      "hf_config": config.hf_config_dict(cfg),
  }


def main(argv=None) -> int:
  files, bindings, rest = gin_utils.split_gin_flags(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(prog="python -m t5x_lite.model_info", description=__doc__)
  parser.add_argument("name", nargs="?", help="model name, e.g. t5-efficient-base-el16-dl8")
  parser.add_argument("--input_length", type=int, default=512)
  parser.add_argument("--target_length", type=int, default=114)
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
    cfg = config.model_config()
  else:
    raise UserError(f"give a model name or --gin_file; names: {config.GRAMMAR}")
  print(json.dumps(describe(cfg, args.input_length, args.target_length), indent=2))
  return 0


if __name__ == "__main__":
  run_main(main)
