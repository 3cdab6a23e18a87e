"""`python -m t5x_lite.infer --model_dir=DIR --input="text with <extra_id_0> ..." [--step=N]
[--max_decode_length=N] [--max_input_length=N] [--ids] [--vocab=spiece.model]
[--dtype=float32|bfloat16]`

Greedy decoding (with the key/value cache) from a checkpoint (local or gs://) on one device. Prints one decoded
line per --input (repeatable), or with --ids one JSON object per input:
{"input_ids": [... 1], "output_ids": [... through the first EOS]}.
An input longer than the run's input length is truncated to it (its first tokens, then EOS), as
the run's own data and T5X's inference are, with one line on stderr saying so.
"""

from t5x_lite import quiet_startup  # noqa: F401  (first: hides native start-up noise)

# isort: split

import argparse
import dataclasses
import json
import sys

from t5x_lite import hf_files, paths
from t5x_lite.errors import UserError, run_main
from t5x_lite.tokens import EOS_ID, check_vocab_fits

DEFAULT_MAX_DECODE_LENGTH = 64


def load_vocabulary(model_dir: str, vocab: str | None, meta: dict) -> hf_files.SentencePieceText:
  """--vocab, else MODEL_DIR/spiece.model (an import, a ready-made run), else the run's task."""
  data, source, why = hf_files.run_sentencepiece(model_dir, vocab, meta)
  if data is None:
    raise UserError(f"no vocabulary: {why}; pass --vocab=PATH/spiece.model")
  hf_files.check_sentencepiece(data, source)
  return hf_files.SentencePieceText(data)


class Decoder:
  """Params of one checkpoint on one device and a jitted greedy decode."""

  def __init__(self, model_dir: str, step: int | None = None, dtype: str = "float32"):
    from t5x_lite import models  # jax is imported only when a model is loaded

    restored = hf_files.restore_params(model_dir, step)
    self.step, self.meta, self.params = restored.step, restored.meta, restored.params
    # Params are float32; float32 activations give the same tokens as a float32 HF export.
    self.cfg = dataclasses.replace(restored.cfg, dtype=dtype, dropout_rate=0.0)
    self.model = models.EncoderDecoderModel(self.cfg)
    self._decode = models.jitted_greedy_decode(self.cfg)
    self._generate = models.greedy_generate

  def default_max_decode_length(self) -> int:
    lengths = self.meta.get("task_feature_lengths") or {}
    return int(lengths.get("targets", DEFAULT_MAX_DECODE_LENGTH))

  def default_max_input_length(self) -> int | None:
    """The run's input length (None for a checkpoint without one, e.g. an import)."""
    length = (self.meta.get("task_feature_lengths") or {}).get("inputs")
    return int(length) if length else None

  def generate(self, input_ids: list[list[int]], max_decode_length: int) -> list[list[int]]:
    """Each input (EOS included) -> its greedy output through the first EOS (or the limit)."""
    return self._generate(
      self._decode, self.params, self.cfg.vocab_size, input_ids, max_decode_length
    )


def fit_input(ids: list[int], limit: int | None, index: int, run_length: bool) -> list[int]:
  """`ids` (EOS last) truncated to `limit` tokens (first tokens, then EOS: seqio's trim with EOS
  after it, as in training), saying so in one line on stderr; 0 or None: no limit.

  Not truncated, an input far longer than the run's decodes for minutes on positions the model
  never saw."""
  if not limit or len(ids) <= limit:
    return ids
  what = f"the run's input length {limit}" if run_length else f"--max_input_length={limit}"
  print(
    f"input {index + 1} is {len(ids):,} tokens, longer than {what}: truncated to its first "
    f"{limit - 1} tokens and EOS (--max_input_length=0 keeps it whole)",
    file=sys.stderr,
    flush=True,
  )
  return ids[: limit - 1] + [EOS_ID]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m t5x_lite.infer",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--step", type=int, default=None, help="default: the latest checkpoint")
  parser.add_argument(
    "--input", action="append", required=True, help="input text (repeatable; decoded as one batch)"
  )
  parser.add_argument(
    "--max_decode_length", type=int, default=None, help="default: the run's target length, else 64"
  )
  parser.add_argument(
    "--max_input_length",
    type=int,
    default=None,
    help="longer inputs are truncated to this many tokens, EOS included (default: the run's "
    "input length; 0: no limit)",
  )
  parser.add_argument("--ids", action="store_true", help="print token ids as JSON")
  parser.add_argument(
    "--vocab",
    default=None,
    help="SentencePiece model (default: MODEL_DIR/spiece.model, else the run's task vocabulary)",
  )
  parser.add_argument(
    "--dtype", default="float32", choices=("float32", "bfloat16"), help="activation dtype"
  )
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.max_decode_length is not None and args.max_decode_length < 1:
    raise UserError(f"--max_decode_length must be positive, got {args.max_decode_length}")
  if args.max_input_length is not None and (
    args.max_input_length < 0 or args.max_input_length == 1
  ):
    raise UserError(f"--max_input_length must be 0 (no limit) or >= 2, got {args.max_input_length}")
  model_dir = paths.resolve(args.model_dir)
  decoder = Decoder(model_dir, args.step, args.dtype)
  vocab = load_vocabulary(model_dir, args.vocab, decoder.meta)
  check_vocab_fits(vocab.vocab_size, decoder.cfg.vocab_size, "the vocabulary")
  limit = args.max_input_length
  if limit is None:
    limit = decoder.default_max_input_length()
  inputs = [
    fit_input(list(vocab.encode(text)) + [EOS_ID], limit, i, args.max_input_length is None)
    for i, text in enumerate(args.input)
  ]
  outputs = decoder.generate(inputs, args.max_decode_length or decoder.default_max_decode_length())
  for input_ids, output_ids in zip(inputs, outputs):
    if args.ids:
      print(json.dumps({"input_ids": input_ids, "output_ids": output_ids}), flush=True)
    else:
      print(vocab.decode(output_ids), flush=True)
  return 0


if __name__ == "__main__":
  run_main(main)
