"""Training a SentencePiece unigram vocabulary with T5's special ids (pad 0, eos 1, unk 2, no
bos) from text or JSON-lines files; the CLI is t5x_lite/train_vocab.py."""

from collections.abc import Iterator
import glob
import gzip
import io
import json
import os

from t5x_lite import paths, progress
from t5x_lite.data import text_encoding
from t5x_lite.errors import UserError
from t5x_lite.tokens import EOS_ID, PAD_ID, UNK_ID

# Lines longer than this many bytes are cut into pieces for training (SentencePiece skips them).
_MAX_SENTENCE_BYTES = 4096
# Text holds no NUL bytes; a binary file has some within its first lines (random bytes: one in
# 256, a line ending at every 256th on average).
_BINARY_PROBE_LINES = 100


def list_files(pattern: str) -> list[str]:
  if paths.is_remote(pattern):
    import tensorflow as tf  # Only remote (gs://) patterns need TF's file system.

    files = tf.io.gfile.glob(pattern)
  else:
    files = glob.glob(os.path.expanduser(pattern))
  if not files:
    raise UserError(f"no files match {pattern!r}")
  isdir = _remote_isdir if paths.is_remote(pattern) else os.path.isdir
  files = [f for f in files if not isdir(f)]
  if not files:
    raise UserError(f"{pattern!r} matches only directories; give the files, e.g. '{pattern}/*'")
  return sorted(files)


def _remote_isdir(path: str) -> bool:
  import tensorflow as tf

  return tf.io.gfile.isdir(path)


def _open_text(path: str) -> tuple[io.TextIOBase, io.RawIOBase]:
  """(text reader, the underlying file, whose position says how many bytes were read)."""
  if paths.is_remote(path):
    import tensorflow as tf

    raw = tf.io.gfile.GFile(path, "rb")
  else:
    raw = open(path, "rb")
  binary = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
  # Bad bytes become U+FFFD rather than stopping the run.
  return io.TextIOWrapper(binary, encoding="utf-8", errors="replace"), raw


def _file_size(path: str) -> int:
  if paths.is_remote(path):
    import tensorflow as tf

    return tf.io.gfile.stat(path).length
  return os.path.getsize(path)


def iter_sentences(
  files: list[str], input_format: str = "text", json_field: str = "text", log=None
) -> Iterator[str]:
  """Non-empty lines (paragraphs) of every document, cut to SentencePiece's line limit.

  With `log`, progress lines (bytes read of the files' total, rate, ETA) go there.
  """
  bar = (
    progress.Progress(
      "reading the corpus", sum(_file_size(f) for f in files), amount=progress.format_bytes, log=log
    )
    if log
    else None
  )
  for path in files:
    text_file, raw = _open_text(path)
    position = 0
    with text_file as f:
      for line_no, line in enumerate(f, 1):
        if bar and line_no % 10_000 == 0:
          bar.advance(raw.tell() - position)
          position = raw.tell()
        if line_no <= _BINARY_PROBE_LINES and "\x00" in line:
          raise UserError(
            text_encoding.conversion_hint(path)
            or f"{path} is a binary file, not text (it holds NUL bytes); give text or "
            f"JSON-lines corpus files (.gz ones are decompressed)"
          )
        if input_format == "jsonl":
          try:
            text = json.loads(line).get(json_field, "")
          except (json.JSONDecodeError, AttributeError):
            raise UserError(f"{path}:{line_no}: not a JSON object line") from None
          if not isinstance(text, str):
            raise UserError(f"{path}:{line_no}: field {json_field!r} is not a string")
        else:
          text = line
        for paragraph in text.split("\n"):
          paragraph = paragraph.strip()
          while paragraph:
            yield paragraph[: _MAX_SENTENCE_BYTES // 4]  # Characters are at most 4 bytes.
            paragraph = paragraph[_MAX_SENTENCE_BYTES // 4 :]
      if bar:
        bar.advance(_file_size(path) - position)
    raw.close()  # a GzipFile leaves the file it reads open
  if bar:
    bar.finish(f"{len(files)} files; SentencePiece now trains (no progress of its own)")


def train_vocab(
  input_pattern: str,
  output_prefix: str,
  vocab_size: int,
  input_format: str = "text",
  json_field: str = "text",
  max_sentences: int = 5_000_000,
  log=None,
) -> str:
  """Trains the model; returns the path of PREFIX.model. `log` receives progress lines."""
  import sentencepiece as spm

  if input_format not in ("text", "jsonl"):
    raise UserError(f"--input_format must be text or jsonl, got {input_format!r}")
  files = list_files(input_pattern)
  paths.make_dirs(os.path.dirname(os.path.abspath(output_prefix)), "output directory")
  sentences = 0

  def counted():
    nonlocal sentences
    for sentence in iter_sentences(files, input_format, json_field, log):
      sentences += 1
      yield sentence

  try:
    spm.SentencePieceTrainer.train(
      sentence_iterator=counted(),
      model_prefix=output_prefix,
      vocab_size=vocab_size,
      model_type="unigram",
      pad_id=PAD_ID,
      eos_id=EOS_ID,
      unk_id=UNK_ID,
      bos_id=-1,
      input_sentence_size=max_sentences,
      shuffle_input_sentence=True,
      num_threads=os.cpu_count() or 1,
      minloglevel=2,
    )
  except RuntimeError as e:  # E.g. a corpus too small for the requested vocab size.
    if not sentences:
      what = (
        f"no field {json_field!r}; check --json_field" if input_format == "jsonl" else "no text"
      )
      raise UserError(f"the files matching {input_pattern!r} hold {what}") from None
    raise UserError(f"SentencePiece training failed: {str(e).strip().splitlines()[-1]}") from None
  return output_prefix + ".model"
