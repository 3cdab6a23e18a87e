"""Vocabularies for tasks, chosen in gin (read when a dataset is built, not at import)."""

import functools

import gin
import seqio

from t5x_lite.tokens import EXTRA_IDS

# The official T5 C4 vocabulary: 32000 SentencePiece pieces; with 100 extra ids, 32100 ids.
C4_VOCAB_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"


@functools.cache
def sentencepiece_vocabulary(
  path: str, extra_ids: int = EXTRA_IDS
) -> seqio.SentencePieceVocabulary:
  """One shared instance per (path, extra_ids); the model file is read lazily on first use."""
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


@gin.configurable
def task_vocabulary(
  default_path: str, path: str | None = None, extra_ids: int = EXTRA_IDS
) -> seqio.Vocabulary:
  """The vocabulary of a task; tasks call it inside a gin scope named after their family.

  gin: `task_vocabulary.path = '...'` sets every task's vocabulary; a scoped binding such as
  `c4/task_vocabulary.path = '...'` sets one family (`c4`, `text`, `jsonl`, `quickstart`).
  """
  return sentencepiece_vocabulary(path or default_path, extra_ids)


def scoped_vocabulary(scope: str, default_path: str) -> seqio.Vocabulary:
  with gin.config_scope(scope):
    return task_vocabulary(default_path)
