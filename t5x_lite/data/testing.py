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


# Packages the train command's process must do without when its data needs none of them.
TF_PACKAGES = ("tensorflow", "seqio", "tensorflow_datasets")
_WITHOUT_TF = f"""
import importlib.abc, importlib.util, runpy, sys
class Absent(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {TF_PACKAGES!r}:
      raise ModuleNotFoundError(f"No module named {{name!r}} (not installed here)", name=name)
sys.meta_path.insert(0, Absent())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
  None if name.split(".")[0] in {TF_PACKAGES!r} else _find_spec(name, package)
)
import atexit, os
atexit.register(lambda: any(m.split(".")[0] in {TF_PACKAGES!r} for m in sys.modules) and os._exit(97))
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def without_tf_command(python: str, module: str, *args: str) -> list[str]:
  """`python -m MODULE ARGS...` as it runs where TensorFlow, seqio and TFDS are not installed:
  importing them fails, and the process exits 97 if one was loaded all the same."""
  return [python, "-c", _WITHOUT_TF, module, *args]
