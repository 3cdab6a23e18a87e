"""The vocabulary of the model being fine-tuned, for the fine-tuning task (no TensorFlow).

The initial checkpoint or HF directory is found by fine-tuning's set-up (t5x_lite/finetune_init.py),
which the data side may not import: it registers its finder here, and the `seq2seq_files` task
asks here when no vocabulary is bound. A module of its own so that registering needs no seqio.
"""

_finder = []


def set_finder(find) -> None:
  """`find()` -> the SentencePiece path of the model being fine-tuned, or None."""
  _finder[:] = [find]


def find() -> str | None:
  return _finder[0]() if _finder else None
