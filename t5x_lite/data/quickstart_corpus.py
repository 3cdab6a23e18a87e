"""The quickstart corpus: English prose that any machine can build offline (a smoke-test corpus, not C4).

Documents are the docstrings of the Python standard library and of installed dependencies
(TensorFlow, NumPy, JAX, ...; one document per module) and the prose of `pydoc_data.topics` (the
reference manual's topics), cleaned to paragraphs of prose (doctests, code blocks, tables and
symbol-heavy lines dropped). The result depends only on the Python installation, so it is
deterministic for a given Python and set of installed
packages. Output, in `cache_dir`:
  train-0000i-of-0000N.jsonl, validation-00000-of-00001.jsonl  ({"text": ...} per line)
  vocab.model / vocab.vocab   (4000-piece SentencePiece model for the quickstart task)
  COMPLETE                    (written last; without it the directory is rebuilt)

CLI: python -m t5x_lite.data.quickstart_corpus [--cache_dir=DIR] [--force]
"""

from t5x_lite import quiet_startup  # noqa: F401  (first: hides native start-up noise)

# isort: split

import argparse
import concurrent.futures
import hashlib
import importlib.util
import inspect
import json
import os
import pathlib
import re
import shutil
import sysconfig
import tempfile
import time

from t5x_lite import paths, progress
from t5x_lite.errors import UserError, run_main

NUM_TRAIN_SHARDS = 4
VALIDATION_PERCENT = 2
VOCAB_SIZE = 4000
# Parts of the stdlib whose docstrings are mostly test or generated noise.
_SKIP_DIRS = {
  "test",
  "tests",
  "idle_test",
  "site-packages",
  "dist-packages",
  "__pycache__",
  "lib2to3",
  "ensurepip",
  "turtledemo",
}
_MIN_WORDS = 8


def default_cache_dir() -> pathlib.Path:
  """`$T5X_LITE_CACHE/quickstart`, by default `~/.cache/t5x_lite/quickstart`."""
  root = os.environ.get("T5X_LITE_CACHE") or os.path.join(
    os.path.expanduser("~"), ".cache", "t5x_lite"
  )
  return pathlib.Path(root) / "quickstart"


def _is_prose(paragraph: str) -> bool:
  """A paragraph of sentences, not code, a table or a signature."""
  lines = paragraph.splitlines()
  if any(
    l.lstrip().startswith((">>>", "...", "$ ", "#", "|", "+-", "==", "--", "..")) for l in lines
  ):
    return False
  words = paragraph.split()
  if len(words) < _MIN_WORDS:
    return False
  letters = sum(c.isalpha() or c.isspace() for c in paragraph)
  if letters < 0.85 * len(paragraph):
    return False
  # Code tends to have few plain lowercase words and many identifiers with _ ( = ; {.
  if sum(paragraph.count(c) for c in "_(){}=[];<>") > 0.03 * len(paragraph):
    return False
  return any(paragraph.rstrip().endswith(p) for p in ".:!?)")


def _clean_paragraphs(text: str) -> list[str]:
  """Splits text at blank lines, drops indented (code) blocks and non-prose, rejoins lines."""
  out = []
  for block in re.split(r"\n\s*\n", text.expandtabs()):
    lines = [l for l in block.splitlines() if l.strip()]
    if not lines:
      continue
    indent = min(len(l) - len(l.lstrip()) for l in lines)
    lines = [l[indent:] for l in lines]
    if any(l.startswith("   ") for l in lines[1:]) and not lines[0].startswith("   "):
      continue  # rst literal block or argument table
    paragraph = " ".join(l.strip() for l in lines)
    if _is_prose("\n".join(lines)):
      out.append(re.sub(r"\s+", " ", paragraph).replace("``", "'"))
  return out


# A triple-quoted string that starts a line: docstrings, and the odd multi-line literal that the
# prose filter then drops. A regex is ~10x faster than parsing every module with `ast`.
_DOCSTRING = re.compile(r'''^[ \t]*[rRuU]?("""|\'\'\')(.*?)\1''', re.S | re.M)


def _module_document(path: str) -> str:
  """All prose paragraphs of one module's docstrings, one paragraph per line."""
  try:
    source = pathlib.Path(path).read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError):
    return ""
  paragraphs = []
  for match in _DOCSTRING.finditer(source):
    paragraphs.extend(_clean_paragraphs(inspect.cleandoc(match.group(2))))
  return "\n".join(paragraphs)


# Installed packages (our dependencies and theirs) whose docstrings add prose; absent ones are skipped.
_PACKAGES = (
  "tensorflow",
  "keras",
  "numpy",
  "scipy",
  "jax",
  "flax",
  "optax",
  "orbax",
  "tensorflow_datasets",
  "seqio",
)


def _python_files(root: str) -> list[str]:
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
    files.extend(
      os.path.join(dirpath, f)
      for f in sorted(filenames)
      if f.endswith(".py") and not f.startswith("test_") and not f.endswith("_test.py")
    )
  return files


def _source_roots() -> list[tuple[str, str]]:
  """(name, directory): the standard library, then each installed package of `_PACKAGES`."""
  roots = [("stdlib", sysconfig.get_paths()["stdlib"])]
  for name in _PACKAGES:
    try:
      spec = importlib.util.find_spec(name)  # Locates the package without importing it.
    except (ImportError, ValueError):
      spec = None
    if spec and spec.submodule_search_locations:
      roots.append((name, sorted(spec.submodule_search_locations)[0]))
  return roots


def _topic_documents() -> list[tuple[str, str]]:
  try:
    from pydoc_data import topics
  except ImportError:
    return []
  return [
    (f"topic:{name}", "\n".join(_clean_paragraphs(text)))
    for name, text in sorted(topics.topics.items())
  ]


def collect_documents(log=None) -> list[tuple[str, str]]:
  """(key, text) for every non-empty document, in a fixed order, paragraphs deduplicated.

  With `log`, progress lines (modules read, rate, ETA) go there.
  """
  keyed_files = [
    (f"{name}/{os.path.relpath(f, root)}", f)
    for name, root in _source_roots()
    for f in _python_files(root)
  ]
  bar = (
    progress.Progress("reading docstrings", len(keyed_files), "modules", every_s=5, log=log)
    if log
    else None
  )
  texts = []
  with concurrent.futures.ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
    for text in pool.map(_module_document, [f for _, f in keyed_files], chunksize=32):
      texts.append(text)
      if bar:
        bar.advance()
  if bar:
    bar.finish()
  docs = [(k, t) for (k, _), t in zip(keyed_files, texts)] + _topic_documents()
  # Generated API mirrors repeat docstrings verbatim; keep each paragraph once.
  seen, out = set(), []
  for key, text in docs:
    fresh = [p for p in text.split("\n") if p and p not in seen]
    seen.update(fresh)
    if fresh:
      out.append((key, "\n".join(fresh)))
  return out


def _is_validation(key: str) -> bool:
  # A hash of the document's name, so the split does not move when other documents change.
  return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 100 < VALIDATION_PERCENT


def corpus_patterns(cache_dir) -> dict[str, str]:
  cache_dir = pathlib.Path(cache_dir)
  return {
    "train": str(cache_dir / "train-*.jsonl"),
    "validation": str(cache_dir / "validation-*.jsonl"),
  }


def vocab_path(cache_dir) -> str:
  return str(pathlib.Path(cache_dir) / "vocab.model")


def _write_corpus(directory: pathlib.Path, log=None) -> dict[str, int]:
  docs = collect_documents(log)
  train = [t for k, t in docs if not _is_validation(k)]
  validation = [t for k, t in docs if _is_validation(k)]
  shards = [
    (f"train-{i:05d}-of-{NUM_TRAIN_SHARDS:05d}.jsonl", train[i::NUM_TRAIN_SHARDS])
    for i in range(NUM_TRAIN_SHARDS)
  ]
  shards.append(("validation-00000-of-00001.jsonl", validation))
  for name, texts in shards:
    with open(directory / name, "w", encoding="utf-8") as f:
      for t in texts:
        f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
  return {
    "train_documents": len(train),
    "validation_documents": len(validation),
    "bytes": sum(len(t.encode()) for _, t in docs),
  }


def ensure_quickstart_assets(
  cache_dir=None, force: bool = False, log=None
) -> tuple[dict[str, str], str]:
  """Builds the corpus and its vocabulary once; returns (split -> file pattern, vocab path).

  With `log`, what is being built and its progress are reported there.

  The whole directory is built under a temporary name and renamed into place, so an interrupted
  build is never mistaken for a complete one.
  """
  cache_dir = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  if force and cache_dir.exists():
    shutil.rmtree(cache_dir)
  if not (cache_dir / "COMPLETE").exists():
    from t5x_lite.data import vocab_training  # Imports sentencepiece; only when building.

    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=cache_dir.name + ".tmp-", dir=cache_dir.parent))
    if log:
      log(
        f"building the quickstart corpus and its vocabulary in {cache_dir} (once; about half a "
        "minute)"
      )
    try:
      stats = _write_corpus(tmp, log)
      started = time.monotonic()
      vocab_training.train_vocab(
        str(tmp / "train-*.jsonl"), str(tmp / "vocab"), VOCAB_SIZE, input_format="jsonl", log=log
      )
      if log:
        log(f"trained the {VOCAB_SIZE}-piece vocabulary in {time.monotonic() - started:.0f}s")
      (tmp / "COMPLETE").write_text(json.dumps(stats) + "\n")
      if cache_dir.exists():  # A partial build from an interrupted run.
        shutil.rmtree(cache_dir)
      try:
        os.rename(tmp, cache_dir)
      except OSError:
        if not (cache_dir / "COMPLETE").exists():  # Not a concurrent builder winning the race.
          raise
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return corpus_patterns(cache_dir), vocab_path(cache_dir)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cache_dir", default=None, help="default: $T5X_LITE_CACHE/quickstart")
  parser.add_argument("--force", action="store_true", help="rebuild even if complete")
  args = parser.parse_args(argv)
  if args.cache_dir:
    paths.check_creatable(args.cache_dir, "--cache_dir")
  try:
    patterns, vocab = ensure_quickstart_assets(
      args.cache_dir, force=args.force, log=progress.log_to_stderr
    )
  except OSError as e:
    raise UserError(f"cannot build the quickstart corpus: {e}") from None
  stats = json.loads((pathlib.Path(vocab).parent / "COMPLETE").read_text())
  print(json.dumps({**patterns, "vocab": vocab, **stats}))
  return 0


if __name__ == "__main__":
  run_main(main)
