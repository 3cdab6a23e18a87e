"""Small corpora and vocabularies for tests (built in temporary directories in seconds)."""

import json
import pathlib
import random

from t5x_lite.data import vocab_training

_WORDS = (
  "the model reads a long text and learns to fill in the missing spans of words while the "
  "encoder sees the corrupted input and the decoder writes the spans back one token at a "
  "time so that every sentinel is followed by what it hides"
).split()


def make_documents(num_docs: int, seed: int = 0, min_words: int = 5, max_words: int = 300):
  rng = random.Random(seed)
  return [
    " ".join(rng.choice(_WORDS) for _ in range(rng.randint(min_words, max_words)))
    for _ in range(num_docs)
  ]


def write_text_shards(directory, prefix: str, docs, num_shards: int = 2, suffix=".txt"):
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for i in range(num_shards):
    with open(directory / f"{prefix}-{i:05d}-of-{num_shards:05d}{suffix}", "w") as f:
      f.writelines(d + "\n" for d in docs[i::num_shards])
  return str(directory / f"{prefix}-*{suffix}")


def write_jsonl_shards(directory, prefix: str, docs, num_shards: int = 2, field: str = "text"):
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for i in range(num_shards):
    with open(directory / f"{prefix}-{i:05d}-of-{num_shards:05d}.jsonl", "w") as f:
      f.writelines(
        json.dumps({"id": j, field: d}) + "\n" for j, d in enumerate(docs[i::num_shards])
      )
  return str(directory / f"{prefix}-*.jsonl")


def train_tiny_vocab(directory, vocab_size: int = 64) -> str:
  """A SentencePiece model with T5's special ids over `make_documents` text."""
  pattern = write_text_shards(
    pathlib.Path(directory) / "vocab_corpus", "corpus", make_documents(200, seed=123), num_shards=1
  )
  return vocab_training.train_vocab(pattern, str(pathlib.Path(directory) / "tiny"), vocab_size)
