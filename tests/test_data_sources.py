"""Corpus sources: raw C4 JSON shards, JSON string decoding in TF, and bad input as one-line errors."""

import gzip
import json
import os
import random
import subprocess
import sys

import gin
import pytest
import tensorflow as tf

from t5x_lite.data import registry, sources, text_decoding
from t5x_lite.errors import UserError
import t5x_lite.tasks  # noqa: F401  (registers the tasks)


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def texts_of(source, split="train"):
  return sorted(
    x["text"].decode() for x in source.get_dataset(split, shuffle=False).as_numpy_iterator()
  )


TRICKY = [
  "plain words",
  'line one\nline two\ttab "quoted" back\\slash \\n literal',
  "caf\u00e9 \u2019quotes\u2019 \U0001f600 emoji",
  'a\\\\\\"b',
  "slash / and \b\f\r controls",
]


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_json_string_field_decodes_like_json(ensure_ascii):
  for text in TRICKY:
    line = json.dumps({"url": 'x"text":"decoy', "text": text, "n": 1}, ensure_ascii=ensure_ascii)
    assert text_decoding.json_string_field(tf.constant(line), "text").numpy().decode() == text
  assert text_decoding.json_string_field(tf.constant('{"other": "x"}'), "text").numpy() == b""


def test_json_string_fields_batched_matches_json_loads():
  # Escapes at string ends next to escape-like starts of the next line, in one batch, so an
  # escape that reached across lines would show.
  rng = random.Random(0)
  alphabet = [
    "\\",
    '"',
    "u",
    "0",
    "4",
    "1",
    "d",
    "D",
    "8",
    "\n",
    "a",
    " ",
    ":",
    "\u00e9",
    "\U0001f600",
    "\t",
    "/",
  ]
  texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(300)]
  lines = [
    json.dumps({"text": t, "k": [1, {"text": 2}]}, ensure_ascii=bool(i % 2))
    for i, t in enumerate(texts)
  ]
  lines += ['{"text": null, "x": "text"}', '{"text": "unterminated', '{"a": {"text": "nested"}}']
  got = [t.decode() for t in text_decoding.json_string_fields(tf.constant(lines), "text").numpy()]
  assert got == texts + ["", "", "nested"]


def test_c4_json_shards(tmp_path):
  docs = {
    "train": [f"train document {i}\nsecond line \u00e9" for i in range(30)],
    "validation": ["validation document"],
  }
  for split, texts in docs.items():
    for shard in range(2 if split == "train" else 1):
      with gzip.open(tmp_path / f"c4-{split}.{shard:05d}-of-00002.json.gz", "wt") as f:
        for t in texts[shard::2] if split == "train" else texts:
          f.write(
            json.dumps(
              {"text": t, "timestamp": "2019-04-25T12:57:54Z", "url": "https://example.com"}
            )
            + "\n"
          )
  gin.parse_config([f"c4_json.data_dir = '{tmp_path}'"])
  source = sources.c4_json_source()
  assert texts_of(source) == sorted(docs["train"])
  assert texts_of(source, "validation") == docs["validation"]


def test_pattern_matching_nothing_names_it(tmp_path):
  pattern = str(tmp_path / "missing-*.txt")
  gin.parse_config([f"text_corpus.train_files = '{pattern}'"])
  with pytest.raises(UserError, match="no files match .*missing-\\*\\.txt"):
    sources.text_source().list_shards("train")
  with pytest.raises(UserError, match="bind text_corpus"):
    sources.text_source().list_shards("validation")
  with pytest.raises(UserError, match="bind c4_json.data_dir"):
    sources.c4_json_source().list_shards("train")


def test_bad_bytes_replaced_and_empty_documents_skipped_and_counted(tmp_path):
  path = tmp_path / "bad.txt"
  path.write_bytes(b"good line\n\xff\xfebad bytes\n\n   \nfine \xc3\n")
  gin.parse_config([f"text_corpus.train_files = '{path}'"])
  source = sources.text_source()
  assert texts_of(source) == sorted(["good line", "\ufffd\ufffdbad bytes", "fine \ufffd"])
  assert sources.document_stats(source, "train") == {
    "documents": 3,
    "empty_skipped": 2,
    "documents_with_invalid_utf8": 2,
    "invalid_utf8_sequences_replaced": 3,
  }


def test_bad_bytes_in_jsonl(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_bytes(b'{"text": "ok \xff end"}\n{"text": ""}\n{"no_text": 1}\n')
  gin.parse_config([f"jsonl_corpus.train_files = '{path}'"])
  source = sources.jsonl_source()
  assert texts_of(source) == ["ok \ufffd end"]
  stats = sources.document_stats(source, "train")
  assert stats["documents"] == 1 and stats["empty_skipped"] == 2
  assert stats["invalid_utf8_sequences_replaced"] == 1


def test_missing_tfds_dataset_names_version_and_directory(tmp_path):
  (tmp_path / "c4" / "en" / "3.0.1").mkdir(parents=True)
  (tmp_path / "c4" / "en" / "3.0.1" / "dataset_info.json").write_text("{}")
  gin.parse_config([f"c4_tfds.data_dir = '{tmp_path}'", "c4_tfds.version = '3.1.0'"])
  with pytest.raises(UserError, match=f"c4/en:3.1.0 not found in {tmp_path}.*3.0.1"):
    registry.refresh("c4_span_corruption")


def test_cli_reports_bad_input_in_one_line(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "t5x_lite.inspect_data",
      "--gin.MIXTURE_OR_TASK_NAME='text_span_corruption'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
      f"--gin.text_corpus.train_files='{tmp_path}/nothing-*.txt'",
    ],
    capture_output=True,
    text=True,
    env=env,
    cwd=os.path.dirname(os.path.dirname(__file__)),
  )
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
    f"error: no files match '{tmp_path}/nothing-*.txt' (split 'train'; "
    "set by text_corpus.train_files / text_corpus.validation_files)"
  )
