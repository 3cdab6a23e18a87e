"""`make quickstart`: build the offline corpus and vocabulary, pretrain a small T5, export it.

Everything runs on CPU with no network; the corpus is a smoke test built from documentation
that ships with Python, not C4.
"""

import argparse
import json
import os
import sys
import time

from t5x_lite import gin_utils
from t5x_lite.errors import run_main

GIN_FILES = ("models/quickstart_tiny.gin", "runs/quickstart.gin")


def main() -> int:
  parser = argparse.ArgumentParser(prog="python -m t5x_lite.quickstart", description=__doc__)
  parser.add_argument("--model_dir", default="runs/quickstart")
  parser.add_argument("--export_dir", default=None, help="default: MODEL_DIR/hf")
  args, extra = parser.parse_known_args()
  model_dir = os.path.abspath(args.model_dir)
  export_dir = os.path.abspath(args.export_dir or os.path.join(model_dir, "hf"))

  from t5x_lite.data import quickstart_corpus
  started = time.time()
  corpus, vocab = quickstart_corpus.ensure_quickstart_assets()
  print(f"quickstart corpus: {corpus['train']} (vocabulary {vocab}), ready in "
        f"{time.time() - started:.0f}s", flush=True)

  from t5x_lite import training
  import tasks  # noqa: F401
  files, bindings, rest = gin_utils.split_gin_flags(extra)
  if rest:
    parser.error(f"unknown arguments {rest}")
  gin_utils.parse_gin([*GIN_FILES, *files], [f"MODEL_DIR = {model_dir!r}", *bindings])
  started = time.time()
  result = training.train()
  train_seconds = time.time() - started

  exported = None
  try:
    from t5x_lite import export_hf
  except ImportError:  # export arrives with the HF bridge
    export_hf = None
  if export_hf is not None:
    exported = export_hf.export(model_dir, export_dir, overwrite=True)

  first = _first_eval(model_dir)
  print("\n== quickstart done ==")
  print(f"trained {result['step']} steps in {train_seconds:.0f}s; eval loss "
        f"{first:.3f} -> {result.get('eval_loss', float('nan')):.3f}")
  print(f"run directory:   {model_dir} (checkpoints/, metrics.jsonl, config.gin, tensorboard/)")
  if exported:
    print(f"HF export:       {export_dir}")
  print("next:")
  print(f"  resume/extend: python -m t5x_lite.train --gin_file={GIN_FILES[0]} "
        f"--gin_file={GIN_FILES[1]} --gin.MODEL_DIR=\"'{model_dir}'\" --gin.TRAIN_STEPS=600")
  print(f"  generate:      python -m t5x_lite.infer --model_dir={model_dir} "
        "--input=\"The <extra_id_0> of the module.\"")
  if exported:
    print(f"  in HF:         T5ForConditionalGeneration.from_pretrained('{export_dir}')")
  print("  real C4:       see README, 'Pretraining on C4'")
  return 0


def _first_eval(model_dir: str) -> float:
  with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      if "eval_loss" in record:
        return record["eval_loss"]
  return float("nan")


if __name__ == "__main__":
  run_main(main)
