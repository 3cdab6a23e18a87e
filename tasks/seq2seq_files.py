"""`seq2seq_files`: fine-tuning examples from local TSV / JSON-lines files, named in gin.

  FINETUNE_TRAIN_FILES / FINETUNE_EVAL_FILES  comma-separated globs (t5x_lite/data/seq2seq_sources.py)
  FINETUNE_VOCABULARY                         SentencePiece model; None: the initial model's

Inputs and targets are tokenized with that vocabulary, truncated to TASK_FEATURE_LENGTHS and end
with EOS. Bad rows are skipped (counted by `inspect_data --stats`).
"""

import seqio

from t5x_lite.data import initial_vocabulary, registry, seq2seq_sources, stream_tasks
from t5x_lite.data.vocab import sentencepiece_vocabulary
from t5x_lite.errors import UserError

TASK_NAME = "seq2seq_files"


def _vocabulary_path() -> str | None:
  """The bound vocabulary, else the initial model's (found by fine-tuning's set-up)."""
  explicit = seq2seq_sources.seq2seq_files_config()["vocabulary"]
  return explicit or initial_vocabulary.find()


def _prepare() -> None:
  if _vocabulary_path() is None:
    raise UserError(
      f"task {TASK_NAME!r} has no vocabulary: set INITIAL_CHECKPOINT_PATH or "
      f"HF_INIT_DIR (their vocabulary is used), or FINETUNE_VOCABULARY"
    )
  _source().check_files()


def _source() -> seq2seq_sources.Seq2SeqFiles:
  return seq2seq_sources.Seq2SeqFiles(seq2seq_sources.seq2seq_files_config())


@registry.task_builder(TASK_NAME, prepare=_prepare)
def seq2seq_files():
  # Without a configured vocabulary (e.g. at import, before gin is parsed) the task is
  # registered with an empty path that `_prepare` reports before anything reads it.
  vocab = sentencepiece_vocabulary(_vocabulary_path() or "")
  features = {
    name: seqio.Feature(vocab, add_eos=True, required=True) for name in ("inputs", "targets")
  }
  source = _source()
  return stream_tasks.StreamTask(
    TASK_NAME,
    make_examples=stream_tasks.examples_as_read,
    num_seeds=0,
    setting=source.setting,
    source=source,
    output_features=features,
    preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
  )
