"""The fine-tuning demo's task: find and correct the misspelt word in a phrase of the quickstart
corpus.

Each example is a phrase of 3 to 5 words from the corpus's prose with one word misspelt (one
letter dropped, doubled or two neighbours swapped); the target is that word as written:

  fix: the compiled reuglar expressions  ->  regular

The fix needs the corpus's words and their contexts, which a model pretrained on the same text
has seen and a freshly initialised one has not; a one-word target keeps exact match reachable
for a tiny model in minutes. Train examples come from the corpus's train
documents, eval examples from its validation documents (held out from pretraining too).
Written as TSV: DIR/train.tsv, DIR/validation.tsv. Deterministic for a given corpus.
"""

import glob
import json
import os
import random
import re

from t5x_lite.data import quickstart_corpus

PREFIX = "fix: "
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


def misspell(word: str, rng: random.Random) -> str:
  i = rng.randrange(1, len(word) - 1)
  kind = rng.choice(("drop", "double", "swap"))
  if kind == "drop":
    return word[:i] + word[i + 1:]
  if kind == "double":
    return word[:i] + word[i] + word[i:]
  swapped = word[:i] + word[i + 1] + word[i] + word[i + 2:]
  return swapped if swapped != word else word[:i] + word[i + 1:]


def _examples(runs: list[list[str]], count: int, rng: random.Random) -> list[tuple[str, str]]:
  out, seen = [], set()
  while len(out) < count and runs:
    run = rng.choice(runs)
    size = rng.randint(3, 5)
    start = rng.randrange(0, max(1, len(run) - size + 1))
    phrase = run[start:start + size]
    candidates = [i for i, w in enumerate(phrase) if len(w) >= 4]
    if not candidates:
      continue
    if " ".join(phrase) in seen:
      continue
    seen.add(" ".join(phrase))
    i = rng.choice(candidates)
    corrupted = phrase[:i] + [misspell(phrase[i], rng)] + phrase[i + 1:]
    out.append((PREFIX + " ".join(corrupted), phrase[i]))
  return out


def write_demo_files(out_dir: str, cache_dir=None, log=None) -> dict[str, str]:
  """Builds the quickstart corpus if needed and writes the demo's TSV files (once)."""
  patterns, _ = quickstart_corpus.ensure_quickstart_assets(cache_dir, log=log)
  files = {"train": os.path.join(out_dir, "train.tsv"),
           "validation": os.path.join(out_dir, "validation.tsv")}
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
