"""`make quickstart`: build the offline corpus and vocabulary, pretrain a small T5, export it.

`make finetune-demo` (`--finetune`): then fine-tune that model on a seq2seq task made from the
same corpus (t5x_lite/data/finetune_demo.py), evaluate it by decoding and export it.

Everything runs on CPU with no network; the corpus is a smoke test built from documentation
that ships with Python, not C4.
"""

from t5x_lite import quiet_startup  # noqa: F401  (first: hides native start-up noise)

# isort: split

import argparse
import json
import os
import time

from t5x_lite import commands, gin_utils
from t5x_lite.errors import run_main

GIN_FILES = ("models/quickstart_tiny.gin", "runs/quickstart.gin")
FINETUNE_GIN_FILES = ("models/quickstart_tiny.gin", "runs/finetune_quickstart.gin")
SAMPLE_INPUT = "The <extra_id_0> of the module."
FINETUNE_STEPS = 800


def main(argv=None) -> int:
  parser = _parser()
  args, extra = parser.parse_known_args(argv)
  if args.finetune:
    return finetune(args, extra)
  model_dir = os.path.abspath(args.model_dir)
  export_dir = os.path.abspath(args.export_dir or os.path.join(model_dir, "hf"))
  _build_corpus()
  files, bindings, rest = gin_utils.split_gin_flags(extra)
  if rest:
    parser.error(f"unknown arguments {rest}")
  result, train_seconds = _train([*GIN_FILES, *files], [f"MODEL_DIR = {model_dir!r}", *bindings])

  from t5x_lite import export_hf

  exported = export_hf.export(model_dir, export_dir, overwrite=True)

  first = _first_eval(model_dir)
  print("\n== quickstart done ==")
  print(
    f"trained {result['step']} steps in {train_seconds:.0f}s; eval loss "
    f"{first:.3f} -> {result.get('eval_loss', float('nan')):.3f}"
  )
  print(f"run directory:   {model_dir} (checkpoints/, metrics.jsonl, config.gin, tensorboard/)")
  if exported:
    print(f"HF export:       {export_dir}")
  print("next:")
  for label, command in next_commands(
    model_dir, export_dir if exported else None, result["step"], extra
  ):
    print(f"  {label + ':':<15}{command}")
  print("  real C4:       see docs/pretraining.md")
  return 0


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m t5x_lite.quickstart", description=__doc__)
  parser.add_argument("--model_dir", default="runs/quickstart")
  parser.add_argument("--export_dir", default=None, help="default: MODEL_DIR/hf")
  parser.add_argument(
    "--finetune",
    action="store_true",
    help="fine-tune the model in MODEL_DIR on the demo task instead",
  )
  parser.add_argument("--finetune_dir", default=None, help="default: MODEL_DIR-finetuned")
  parser.add_argument(
    "--finetune_steps",
    type=int,
    default=FINETUNE_STEPS,
    help="steps after the pretrained checkpoint's",
  )
  return parser


def _build_corpus() -> None:
  """The quickstart corpus and its vocabulary, built once."""
  from t5x_lite.data import quickstart_corpus

  started = time.time()
  corpus, vocab = quickstart_corpus.ensure_quickstart_assets(log=print)
  print(
    f"quickstart corpus: {corpus['train']} (vocabulary {vocab}), ready in "
    f"{time.time() - started:.0f}s",
    flush=True,
  )


def _train(gin_files: list[str], bindings: list[str]) -> tuple[dict, float]:
  """Trains with this gin; returns what training.train returns and the seconds it took."""
  from t5x_lite import training
  import t5x_lite.tasks  # noqa: F401

  gin_utils.parse_gin(gin_files, bindings)
  started = time.time()
  result = training.train()
  return result, time.time() - started


def next_commands(
  model_dir: str, export_dir: str | None, steps: int, extra: list[str]
) -> list[tuple[str, str]]:
  """(label, shell command) pairs to paste after the quickstart, in a shell in any directory;
  the flags it was given repeat, but for the step count that the resume command sets anew."""
  gin_flags = [f"--gin_file={f}" for f in GIN_FILES] + _repeated(extra)
  out = [
    (
      "resume/extend",
      commands.module_command(
        "t5x_lite.train",
        [*gin_flags, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={2 * steps}"],
      ),
    ),
    (
      "generate",
      commands.module_command(
        "t5x_lite.infer", [f"--model_dir={model_dir}", f"--input={SAMPLE_INPUT}"]
      ),
    ),
  ]
  if export_dir:
    load = (
      f"from transformers import AutoTokenizer, T5ForConditionalGeneration as T5; "
      f"d = {export_dir!r}; model = T5.from_pretrained(d); "
      f"tok = AutoTokenizer.from_pretrained(d); "
      f"ids = model.generate(**tok({SAMPLE_INPUT!r}, return_tensors='pt'), max_new_tokens=16); "
      f"print(tok.decode(ids[0]))"
    )
    out.append(("in HF", f"{commands.quote(commands.python())} -c {commands.quote(load)}"))
  return out


def _repeated(extra: list[str]) -> list[str]:
  """The user's flags as a printed command repeats them: not the step count or MODEL_DIR it sets
  itself (gin would take the last of two), and gin files of the working directory absolute."""
  return commands.absolute_gin_files(commands.without_bindings(extra, ("TRAIN_STEPS", "MODEL_DIR")))


def _first_eval(model_dir: str, key: str = "eval_loss") -> float:
  with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      if key in record:
        return record[key]
  return float("nan")


def _latest_step(model_dir: str) -> int | None:
  directory = os.path.join(model_dir, "checkpoints")
  steps = [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) else []
  return max(steps) if steps else None


def finetune(args, extra: list[str]) -> int:
  """Fine-tunes the quickstart's model on the demo task, then exports it."""
  from t5x_lite.errors import UserError

  model_dir = os.path.abspath(args.model_dir)
  tuned_dir = os.path.abspath(args.finetune_dir or model_dir.rstrip("/") + "-finetuned")
  export_dir = os.path.join(tuned_dir, "hf")
  pretrained_step = _latest_step(model_dir)
  if pretrained_step is None:
    raise UserError(
      f"no checkpoint in {model_dir}: run `make quickstart MODEL_DIR={args.model_dir}` first"
    )
  files = _write_demo_files()
  run_flags = _finetune_flags(model_dir, tuned_dir, files)
  gin_flags = [*run_flags, f"--gin.TRAIN_STEPS={pretrained_step + args.finetune_steps}", *extra]
  gin_files, bindings, rest = gin_utils.split_gin_flags(gin_flags)
  if rest:
    raise UserError(f"unknown arguments {rest}")
  result, train_seconds = _train(gin_files, bindings)

  from t5x_lite import export_hf

  exported = export_hf.export(tuned_dir, export_dir, overwrite=True)

  print("\n== fine-tuning demo done ==")
  print(
    f"fine-tuned steps {pretrained_step}..{result['step']} in {train_seconds:.0f}s; exact "
    f"match on {files['validation']}: {_first_eval(tuned_dir, 'eval_exact_match'):.3f} -> "
    f"{result.get('eval_exact_match', float('nan')):.3f}"
  )
  print(f"run directory:   {tuned_dir} (predictions/<step>.jsonl, metrics.jsonl, checkpoints/)")
  if exported:
    print(f"HF export:       {export_dir}")
  resume_flags = [
    *run_flags,
    f"--gin.TRAIN_STEPS={result['step'] + args.finetune_steps}",
    *_repeated(extra),
  ]
  _print_finetune_next(tuned_dir, resume_flags, files["validation"])
  return 0


def _write_demo_files() -> dict[str, str]:
  """The demo task's train and validation files, made from the quickstart corpus."""
  from t5x_lite.data import finetune_demo, quickstart_corpus

  return finetune_demo.write_demo_files(
    str(quickstart_corpus.default_cache_dir()) + "-finetune-demo", log=print
  )


def _finetune_flags(model_dir: str, tuned_dir: str, files: dict[str, str]) -> list[str]:
  """The fine-tuning run's flags, but for its step count."""
  return [f"--gin_file={f}" for f in FINETUNE_GIN_FILES] + [
    f"--gin.MODEL_DIR='{tuned_dir}'",
    f"--gin.INITIAL_CHECKPOINT_PATH='{model_dir}'",
    f"--gin.FINETUNE_TRAIN_FILES='{files['train']}'",
    f"--gin.FINETUNE_EVAL_FILES='{files['validation']}'",
  ]


def _print_finetune_next(tuned_dir: str, resume_flags: list[str], validation_file: str) -> None:
  """Commands to resume the fine-tuning and to decode the first validation input."""
  with open(validation_file, encoding="utf-8") as f:
    sample = f.readline().split("\t")[0]
  print("next:")
  print(f"  {'resume/extend:':<15}" + commands.module_command("t5x_lite.train", resume_flags))
  print(
    f"  {'generate:':<15}"
    + commands.module_command("t5x_lite.infer", [f"--model_dir={tuned_dir}", f"--input={sample}"])
  )


if __name__ == "__main__":
  run_main(main)
