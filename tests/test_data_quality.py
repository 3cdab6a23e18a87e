"""What the training streams skip or repair is counted and reported, and bad data stops the run
in one line (t5x_lite/data/quality.py): truncated JSON lines, binary files, invalid UTF-8, broken
seq2seq rows. Read through the trainer's own pipeline (pipeline.train_iterator)."""

import json
import pathlib

import conftest
from conftest import TINY_MODEL
import gin
import pytest

from t5x_lite.data import pipeline, testing
from t5x_lite.errors import UserError
import t5x_lite.tasks  # noqa: F401  (registers the tasks)

LENGTHS = {"inputs": 32, "targets": 8}


@pytest.fixture
def vocab(tmp_path_factory):
  return testing.train_tiny_vocab(tmp_path_factory.mktemp("vocab"))


def jsonl(path: pathlib.Path, docs, broken=()) -> str:
  """JSON lines of `docs`; lines whose index is in `broken` cut in half (truncated)."""
  lines = [json.dumps({"id": i, "text": d}) for i, d in enumerate(docs)]
  lines = [l[: len(l) // 2] if i in broken else l for i, l in enumerate(lines)]
  path.write_text("".join(l + "\n" for l in lines))
  return str(path)


def configure(vocab, train, validation, task="jsonl", count=1) -> None:
  gin.clear_config()
  gin.parse_config(
    [
      f"{task}_corpus.train_files = '{train}'",
      f"{task}_corpus.validation_files = '{validation}'",
      f"task_vocabulary.path = '{vocab}'",
      f"logical_shards.count = {count}",
    ]
  )


def read(task: str, batches: int, count: int = 1):
  it = pipeline.train_iterator(f"{task}_span_corruption", LENGTHS, 4)
  for _ in range(batches):
    next(it)
  return it


def test_a_few_truncated_lines_are_skipped_and_counted(vocab, tmp_path):
  docs = testing.make_documents(200, seed=4, max_words=40)
  train = jsonl(tmp_path / "train.jsonl", docs, broken={3, 50, 120})
  configure(vocab, train, train)
  it = read("jsonl", 30)
  counts = it.quality_counts()
  assert counts["malformed"] == 3 and counts["records"] == 200
  assert counts["invalid_utf8"] == counts["binary"] == counts["empty"] == 0


def test_a_fifth_truncated_stops_with_the_file_the_count_and_the_setting(vocab, tmp_path):
  docs = testing.make_documents(200, seed=4, max_words=40)
  train = jsonl(tmp_path / "train.jsonl", docs, broken=set(range(0, 200, 5)))
  configure(vocab, train, train)
  with pytest.raises(UserError) as error:
    read("jsonl", 30)
  message = str(error.value)
  assert message.startswith(f"{train}: ")
  assert "malformed" in message and "data_quality.max_skipped_fraction=0.01" in message
  assert "each line one JSON object with a string in its 'text' field" in message


def test_a_binary_file_given_as_text_stops_at_once(vocab, tmp_path):
  binary = tmp_path / "model.bin"
  binary.write_bytes(bytes(range(256)) * 400)
  text = testing.write_text_shards(tmp_path, "val", testing.make_documents(20), num_shards=1)
  configure(vocab, str(binary), text, task="text")
  with pytest.raises(UserError, match=rf"^{binary} is not text: \d+ of \d+ records read hold NUL"):
    read("text", 1)


def test_invalid_utf8_is_repaired_and_counted(vocab, tmp_path):
  docs = testing.make_documents(100, seed=5, max_words=40)
  path = tmp_path / "train.txt"
  path.write_bytes(
    b"".join(d.encode() + (b"\xff\xfe" if i % 10 == 0 else b"") + b"\n" for i, d in enumerate(docs))
  )
  configure(vocab, str(path), str(path), task="text")
  counts = read("text", 1).quality_counts()  # 100 lines: one group, the whole epoch
  assert counts["invalid_utf8"] == 10 and counts["malformed"] == counts["binary"] == 0


def test_counts_survive_a_resume(vocab, tmp_path):
  docs = testing.make_documents(300, seed=6, max_words=40)
  train = jsonl(tmp_path / "train.jsonl", docs, broken={7, 250})
  configure(vocab, train, train)
  it = read("jsonl", 5)
  it.save(str(tmp_path / "saved"))
  before = it.quality_counts()
  for _ in range(60):  # on through the whole epoch: both broken lines are read
    next(it)
  resumed = pipeline.train_iterator("jsonl_span_corruption", LENGTHS, 4)
  resumed.restore(str(tmp_path / "saved"))
  assert resumed.quality_counts() == before
  for _ in range(60):
    next(resumed)
  assert resumed.quality_counts() == it.quality_counts()
  assert it.quality_counts()["malformed"] >= 2  # both broken lines, then the next epoch's


def test_broken_seq2seq_rows_are_counted_and_never_trained_or_evaluated(tmp_path):
  from t5x_lite.data import seq2seq_sources  # noqa: F401

  rows = [f"question {i}\tanswer {i}" for i in range(40)]
  rows[3] = "a row without its target"
  rows[9] = "\tno input"
  raw = "".join(r + "\n" for r in rows).encode()
  raw = raw.replace(b"question 17", b"question \xff17")  # invalid UTF-8, repaired
  path = tmp_path / "rows.tsv"
  path.write_bytes(raw)
  vocab = testing.train_tiny_vocab(tmp_path)
  gin.clear_config()
  gin.parse_config(
    [
      f"seq2seq_files.train_files = '{path}'",
      f"seq2seq_files.eval_files = '{path}'",
      f"seq2seq_files.vocabulary = '{vocab}'",
      "logical_shards.count = 1",
    ]
  )
  it = pipeline.train_iterator("seq2seq_files", LENGTHS, 4)
  seen = [next(it) for _ in range(9)]  # 38 good rows: 9 batches of 4 in the first epoch
  counts = it.quality_counts()
  assert counts["malformed"] == 1 and counts["empty"] == 1 and counts["invalid_utf8"] == 1
  eos_only = [[1] + [0] * (LENGTHS["inputs"] - 1)]
  evaluated = pipeline.eval_dataset("seq2seq_files", LENGTHS, 4).take(9).as_numpy_iterator()
  for batch in seen + list(evaluated):
    inputs = batch["encoder_input_tokens"].tolist()
    assert not any(row in eos_only for row in inputs)  # no empty input reaches a batch


def test_a_run_reports_what_it_skipped_once_and_in_metrics(tiny_corpus, tmp_path, capsys):
  docs = testing.make_documents(120, seed=8, max_words=40)
  train = jsonl(tmp_path / "train.jsonl", docs, broken={1, 2})
  conftest.train_in_process(
    ["runs/quickstart.gin"],
    [
      *TINY_MODEL,
      "MIXTURE_OR_TASK_NAME = 'jsonl_span_corruption'",
      f"jsonl_corpus.train_files = '{train}'",
      f"jsonl_corpus.validation_files = '{train}'",
      f"task_vocabulary.path = '{tiny_corpus.vocab}'",
      f"MODEL_DIR = '{tmp_path / 'run'}'",
      "TRAIN_STEPS = 4",
      "CHECKPOINT_PERIOD = 4",
      "EVAL_PERIOD = 4",
      "train.eval_steps = 1",
      "train.log_period = 2",
      "logical_shards.count = 1",
    ],
  )
  out = capsys.readouterr().out
  first = [l for l in out.splitlines() if l.startswith("data: ") and "so far" in l]
  assert len(first) == 1 and "skipped: 2 malformed lines" in first[0]
  rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  data_rows = [r for r in rows if "data_records" in r]
  assert len(data_rows) == 1 and data_rows[0]["data_malformed"] == 2
  assert data_rows[0]["step"] == 4


def tsv_with_missing_targets(path: pathlib.Path, rows: int, every: int) -> str:
  """A seq2seq TSV whose every `every`-th row lacks its target column."""
  lines = [f"question {i}" if i % every == 0 else f"question {i}\tanswer {i}" for i in range(rows)]
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


def configure_seq2seq(path: str, vocab: str, count: int) -> None:
  gin.clear_config()
  gin.parse_config(
    [
      f"seq2seq_files.train_files = '{path}'",
      f"seq2seq_files.eval_files = '{path}'",
      f"seq2seq_files.vocabulary = '{vocab}'",
      f"logical_shards.count = {count}",
    ]
  )


def test_the_skipped_limit_holds_for_the_whole_split_not_per_shard(vocab, tmp_path):
  """400 rows, a third without a target, over 32 logical shards: each shard skips only 4 of its
  12 or 13 rows (within 10 free), the split 134 of 400 (more than 10 + 1%)."""
  path = tsv_with_missing_targets(tmp_path / "rows.tsv", 400, every=3)
  configure_seq2seq(path, vocab, count=32)
  with pytest.raises(UserError) as error:
    next(pipeline.train_iterator("seq2seq_files", LENGTHS, 32))
  assert str(error.value).startswith(f"{path}: 134 of the 400 records read so far were skipped")
  assert "data_quality.max_skipped_fraction=0.01" in str(error.value)

  # Within the limit (14 of 400: 10 free + 1%) the split reads on.
  path = tsv_with_missing_targets(tmp_path / "fine.tsv", 400, every=29)
  configure_seq2seq(path, vocab, count=32)
  assert next(pipeline.train_iterator("seq2seq_files", LENGTHS, 32))


def test_several_processes_check_the_counts_of_all_of_them(vocab, tmp_path):
  """A process reading half the shards leaves the limit to the trainer, which checks the sum of
  every process's counts (training._report_data gathers them)."""
  path = tsv_with_missing_targets(tmp_path / "rows.tsv", 400, every=3)
  configure_seq2seq(path, vocab, count=32)
  iterators = [
    pipeline.train_iterator("seq2seq_files", LENGTHS, 32, process_index=i, process_count=2)
    for i in range(2)
  ]
  for it in iterators:
    next(it)  # no process fails on its own half
  from t5x_lite.data import quality

  counts = quality.totals([it.quality_counts() for it in iterators])
  assert counts["records"] == 400 and counts["malformed"] == 134
  with pytest.raises(UserError, match=r": 134 of the 400 records read so far were skipped"):
    iterators[0].check_skipped(counts)


@pytest.mark.parametrize(
  "codec, named",
  [
    ("utf-16", "UTF-16"),  # with a byte order mark
    ("utf-16-le", "UTF-16LE"),
    ("utf-16-be", "UTF-16BE"),
    ("utf-32", "UTF-32"),
    ("utf-32-le", "UTF-32LE"),
    ("utf-32-be", "UTF-32BE"),
  ],
)
def test_utf16_and_utf32_text_are_named_with_their_conversion(tmp_path, codec, named):
  from t5x_lite.data import text_encoding

  docs = testing.make_documents(53, seed=7, max_words=30)
  path = tmp_path / "corpus.txt"
  path.write_bytes("".join(d + "\n" for d in docs).encode(codec))
  assert text_encoding.wide_encoding(text_encoding.read_head(str(path))) == named
  assert text_encoding.conversion_hint(str(path)) == (
    f"{path} is text in {named}, not UTF-8 (what the corpus readers read): convert it with "
    f"`iconv -f {named} -t UTF-8 {path} > {tmp_path / 'corpus.utf8.txt'}` and give "
    f"{tmp_path / 'corpus.utf8.txt'} instead"
  )
  utf8 = tmp_path / "utf8.txt"
  utf8.write_text("".join(d + "\n" for d in docs) + "naïve café ünïcödé\n")
  binary = tmp_path / "model.bin"
  binary.write_bytes(bytes(range(256)) * 40)
  for other in (utf8, binary):
    assert text_encoding.conversion_hint(str(other)) is None


def test_a_utf16_corpus_is_refused_with_the_command_that_converts_it(vocab, tmp_path):
  import shutil
  import subprocess

  docs = testing.make_documents(53, seed=7, max_words=30)
  wide = tmp_path / "corpus.txt"
  wide.write_bytes("".join(d + "\n" for d in docs).encode("utf-16"))
  configure(vocab, str(wide), str(wide), task="text")
  with pytest.raises(UserError) as error:
    read("text", 1)
  message = str(error.value)
  assert message.startswith(f"{wide} is text in UTF-16, not UTF-8"), message
  command = message.split("`")[1]
  from t5x_lite.data import vocab_training  # training a vocabulary on it says the same

  with pytest.raises(UserError, match="is text in UTF-16, not UTF-8"):
    list(vocab_training.iter_sentences([str(wide)]))
  if shutil.which("iconv"):  # the command works as given
    subprocess.run(command, shell=True, check=True)
    converted = tmp_path / "corpus.utf8.txt"
    configure(vocab, str(converted), str(converted), task="text")
    assert read("text", 1).quality_counts()["binary"] == 0
