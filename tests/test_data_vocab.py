"""Vocabulary training (T5 special ids, 100 sentinels) and the offline quickstart corpus build."""

import json
import pathlib

import gin
import pytest
import sentencepiece as spm
import seqio

from t5x_lite import train_vocab
from t5x_lite.data import pipeline, quickstart_corpus, testing
from t5x_lite.errors import UserError
import t5x_lite.tasks  # noqa: F401  (registers the tasks)


def test_train_vocab_has_t5_special_ids_and_sentinels(tmp_path):
  pattern = testing.write_jsonl_shards(tmp_path, "docs", testing.make_documents(100), field="body")
  path = train_vocab.train_vocab(
    pattern, str(tmp_path / "v"), 80, input_format="jsonl", json_field="body"
  )
  sp = spm.SentencePieceProcessor(model_file=path)
  assert (sp.get_piece_size(), sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (
    80,
    0,
    1,
    2,
    -1,
  )
  vocab = seqio.SentencePieceVocabulary(path, extra_ids=100)
  assert vocab.vocab_size == 180 and vocab.eos_id == 1 and vocab.pad_id == 0
  ids = vocab.encode("the model <extra_id_0>")
  assert ids[-1] == 179
  assert vocab.decode([178]) == "<extra_id_1>"


def test_train_vocab_rejects_empty_pattern(tmp_path):
  with pytest.raises(UserError, match="no files match"):
    train_vocab.train_vocab(str(tmp_path / "none*.txt"), str(tmp_path / "v"), 80)


@pytest.mark.parametrize(
  "make_input, output, message",
  [
    (lambda d: d.joinpath("b.bin").write_bytes(bytes(range(256)) * 40), "v", "is a binary file"),
    (lambda d: d.joinpath("empty.txt").write_text(""), "v", "hold no text"),
    (lambda d: d.joinpath("docs").mkdir(), "v", "matches only directories; give the files, e.g."),
    (
      lambda d: d.joinpath("a.txt").write_text("some text\n"),
      "a.txt/v",
      "output directory {d}/a.txt is a file, not a directory",
    ),
  ],
  ids=["binary input", "empty input", "a directory as input", "output under a file"],
)
def test_train_vocab_refuses_what_is_not_a_corpus(tmp_path, make_input, output, message):
  """One line that says what the input is, instead of SentencePiece's own words (which ask for
  a smaller vocabulary, or name a C++ check), and nothing written."""
  make_input(tmp_path)
  inputs = sorted(p.name for p in tmp_path.iterdir())
  with pytest.raises(UserError, match=message.format(d=tmp_path)) as refused:
    train_vocab.train_vocab(str(tmp_path / inputs[0]), str(tmp_path / output), 50)
  assert "\n" not in str(refused.value)
  assert sorted(p.name for p in tmp_path.iterdir()) == inputs


def test_clean_paragraphs_keeps_prose_and_drops_code():
  doc = """Return the number of items in the container, counting duplicates once.

  >>> len([1, 2])
  2

  Example::

      for x in range(10): print(x)

  x = foo(a, b) + bar[c]; d = {e: f}

  Short line.
  """
  assert quickstart_corpus._clean_paragraphs(doc) == [
    "Return the number of items in the container, counting duplicates once."
  ]


@pytest.fixture
def small_build(monkeypatch):
  """Replaces the (half-minute) real corpus with a small one to test the build logic."""
  docs = [(f"doc{i}", d) for i, d in enumerate(testing.make_documents(300, max_words=80))]
  monkeypatch.setattr(quickstart_corpus, "collect_documents", lambda log=None: docs)
  monkeypatch.setattr(quickstart_corpus, "VOCAB_SIZE", 60)
  return docs


def test_quickstart_assets_are_built_once_and_atomically(small_build, tmp_path):
  cache = tmp_path / "qs"
  cache.mkdir()
  (cache / "train-00000-of-00004.jsonl").write_text("partial\n")  # An interrupted build.
  patterns, vocab = quickstart_corpus.ensure_quickstart_assets(cache)
  assert (cache / "COMPLETE").exists() and pathlib.Path(vocab).exists()
  train = sorted(cache.glob("train-*.jsonl"))
  assert len(train) == quickstart_corpus.NUM_TRAIN_SHARDS
  lines = [json.loads(l)["text"] for p in train for l in p.read_text().splitlines()]
  val = [
    json.loads(l)["text"]
    for l in (cache / "validation-00000-of-00001.jsonl").read_text().splitlines()
  ]
  assert sorted(lines + val) == sorted(t for _, t in small_build) and val
  stamp = (cache / "COMPLETE").stat().st_mtime_ns
  assert quickstart_corpus.ensure_quickstart_assets(cache) == (patterns, vocab)
  assert (cache / "COMPLETE").stat().st_mtime_ns == stamp
  assert [p.name for p in tmp_path.iterdir()] == ["qs"]  # No temporary directories left.


def test_quickstart_task_builds_assets_on_first_use(small_build, tmp_path):
  gin.clear_config()
  gin.parse_config([f"quickstart_corpus.cache_dir = '{tmp_path / 'qs'}'"])
  try:
    ds = pipeline.get_dataset(
      "quickstart_span_corruption", {"inputs": 32, "targets": 8}, "train", 2
    )
    batch = next(iter(ds))
    assert batch["encoder_input_tokens"].shape == (2, 32)
    assert pipeline.get_vocabulary("quickstart_span_corruption").vocab_size == 160
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_real_quickstart_corpus_is_large_enough(tmp_path):
  quickstart_corpus.ensure_quickstart_assets(tmp_path / "qs")
  stats = json.loads((tmp_path / "qs" / "COMPLETE").read_text())
  assert stats["bytes"] >= 5_000_000 and stats["validation_documents"] > 20
