"""The fine-tuning demo's task: find the doubled word in a phrase of the quickstart corpus.

Each example is a phrase of 3 to 5 words from the corpus's prose with one of its words written
twice in a row (the typo a proofreader catches); the target is that word:

  doubled: the compiled compiled regular expressions  ->  compiled

Finding it takes matching the pieces of the corpus's words across positions and copying a word
from the input, which a tiny model learns in a few hundred steps; a one-word target keeps exact
match meaningful. Train examples come from the corpus's train documents, eval examples from its
validation documents (held out from pretraining too). Written as TSV under DIR/doubled-word/:
train.tsv, validation.tsv. Deterministic for a given corpus.
"""

import glob
import json
import os
import random
import re

from t5x_lite.data import quickstart_corpus

TASK = "doubled-word"
PREFIX = "doubled: "
NUM_TRAIN = 20000
NUM_VALIDATION = 200
_WORD = re.compile(r"[A-Za-z][a-z]+")


def _phrases(pattern: str) -> list[list[str]]:
  """Runs of 3+ plain lowercase-or-capitalised words (no digits, punctuation or code)."""
  runs = []
  for path in sorted(glob.glob(pattern)):
    with open(path, encoding="utf-8") as f:
      for line in f:
        text = json.loads(line)["text"]
        for sentence in re.split(r"[.;:!?()\[\]\n,\"']", text):
          words = sentence.split()
          run = []
          for word in words + [""]:
            if _WORD.fullmatch(word):
              run.append(word)
            else:
              if len(run) >= 3:
                runs.append(run)
              run = []
  return runs


def _examples(runs: list[list[str]], count: int, rng: random.Random) -> list[tuple[str, str]]:
  out, seen = [], set()
  while len(out) < count and runs:
    run = rng.choice(runs)
    size = rng.randint(3, 5)
    start = rng.randrange(0, max(1, len(run) - size + 1))
    phrase = run[start : start + size]
    if len(phrase) < 3 or " ".join(phrase) in seen:
      continue
    seen.add(" ".join(phrase))
    if any(a == b for a, b in zip(phrase, phrase[1:])):  # a word doubled in the text already
      continue
    i = rng.randrange(len(phrase))
    corrupted = phrase[: i + 1] + [phrase[i]] + phrase[i + 1 :]
    out.append((PREFIX + " ".join(corrupted), phrase[i]))
  return out


def write_demo_files(out_dir: str, cache_dir=None, log=None) -> dict[str, str]:
  """Builds the quickstart corpus if needed and writes the demo's TSV files under
  OUT_DIR/doubled-word (once)."""
  patterns, _ = quickstart_corpus.ensure_quickstart_assets(cache_dir, log=log)
  out_dir = os.path.join(out_dir, TASK)
  files = {
    "train": os.path.join(out_dir, "train.tsv"),
    "validation": os.path.join(out_dir, "validation.tsv"),
  }
  if all(os.path.isfile(p) for p in files.values()):
    return files
  os.makedirs(out_dir, exist_ok=True)
  rng = random.Random(0)
  for split, count in (("train", NUM_TRAIN), ("validation", NUM_VALIDATION)):
    rows = _examples(_phrases(patterns[split]), count, rng)
    tmp = files[split] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(f"{inputs}\t{target}\n" for inputs, target in rows)
    os.replace(tmp, files[split])
  if log:
    log(f"wrote the fine-tuning demo's examples to {out_dir}")
  return files
