"""Trains a SentencePiece unigram vocabulary with T5's special ids (pad 0, eos 1, unk 2, no bos).

  python -m t5x_lite.train_vocab --input='corpus/*.txt' --output=vocabs/my --vocab_size=32000
  python -m t5x_lite.train_vocab --input='c4/c4-train.0000*-of-01024.json.gz' --input_format=jsonl \\
      --output=vocabs/c4 --vocab_size=32000

Writes PREFIX.model and PREFIX.vocab. Use it through
`seqio.SentencePieceVocabulary('PREFIX.model', extra_ids=100)` (gin: `task_vocabulary.path`),
which appends the 100 sentinels <extra_id_99> .. <extra_id_0> after the pieces.
"""

from t5x_lite import quiet_startup  # noqa: F401  (first: hides native start-up noise)

# isort: split

import argparse
import sys
import time

from t5x_lite import progress
from t5x_lite.data.vocab_training import train_vocab
from t5x_lite.errors import run_main


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--input", required=True, help="glob of corpus files (.gz ok, gs:// ok)")
  parser.add_argument("--output", required=True, help="output prefix: writes PREFIX.model/.vocab")
  parser.add_argument("--vocab_size", type=int, default=32000)
  parser.add_argument(
    "--input_format",
    choices=("text", "jsonl"),
    default="text",
    help="text: one document per line; jsonl: one JSON object per line",
  )
  parser.add_argument("--json_field", default="text", help="field holding the text (jsonl)")
  parser.add_argument(
    "--max_sentences",
    type=int,
    default=5_000_000,
    help="sample at most this many lines for training",
  )
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  # Progress goes to stderr: stdout holds only the model's path, for scripts.
  started = time.monotonic()
  path = train_vocab(
    args.input,
    args.output,
    args.vocab_size,
    args.input_format,
    args.json_field,
    args.max_sentences,
    log=progress.log_to_stderr,
  )
  progress.log_to_stderr(
    f"trained {path} in {progress.format_duration(time.monotonic() - started)}"
  )
  print(path)
  return 0


if __name__ == "__main__":
  run_main(main)
