"""The seqio-per-shard pipelines (data_reader.kind='seqio', and every data position saved by
earlier versions) run without tf.data autotuning (whose iterators took up to a minute each to
delete, so a finished run sat idle); a data position saved by the earlier pipelines, which
autotuned, still resumes bit-exactly and keeps autotuning."""

import json
import pathlib
import shutil

import conftest
from conftest import TINY_MODEL
import gin
import pytest
from test_logical_shards import assert_same
from test_train_e2e import assert_bit_identical, final_params

from t5x_lite import gin_utils
from t5x_lite.data import logical_shards, pipeline, seqio_shards
from t5x_lite.errors import UserError
import t5x_lite.tasks  # noqa: F401  (registers the tasks)

TASK = "text_span_corruption"
LENGTHS = {"inputs": 32, "targets": 8}
BATCH_SIZE = 8  # TINY_MODEL's
# Two logical shards (not the default eight): still several per process, and each autotuned
# iterator these tests delete costs seconds.
SHARDS = "logical_shards.count = 2"
TINY = [
  *TINY_MODEL,
  "train.eval_steps = 1",
  "train.log_period = 1",
  "CHECKPOINT_PERIOD = 2",
  "EVAL_PERIOD = 2",
  SHARDS,
]


@pytest.fixture
def configured(tiny_corpus):
  gin.clear_config()
  gin.parse_config([*tiny_corpus.bindings(), SHARDS])
  yield tiny_corpus
  gin.clear_config()


def stream(autotune: bool) -> pipeline.DataIterator:
  """The seqio-per-shard train stream of the tiny run (seed 0, one process)."""
  plan = logical_shards.make_plan(BATCH_SIZE)
  return seqio_shards.train_iterator(TASK, LENGTHS, plan, seed=0, autotune=autotune)


def save_as_earlier_version(it: pipeline.DataIterator, directory: pathlib.Path) -> None:
  """What earlier versions wrote: the same pipeline (autotuning on, tf.data's default) and
  state.json without the autotune key."""
  it.save(str(directory))
  for state_file in directory.glob("shard_*/state.json"):
    state = json.loads(state_file.read_text())
    del state[seqio_shards.AUTOTUNE_STATE_KEY]
    state_file.write_text(json.dumps(state))


def assert_same_batches(expected: list[dict], got: list[dict]) -> None:
  assert len(expected) == len(got)
  for e, g in zip(expected, got):
    assert_same(e, g)


def test_earlier_position_resumes_with_autotuning_and_exactly(configured, tmp_path):
  earlier = stream(True)
  first = [next(earlier) for _ in range(3)]
  save_as_earlier_version(earlier, tmp_path / "earlier")
  expected = [next(earlier) for _ in range(4)]
  # Autotuning changes no row: a new stream reads the same batches.
  new = stream(False)
  assert_same_batches(first + expected, [next(new) for _ in range(7)])

  assert pipeline.DataIterator.saved_autotune(str(tmp_path / "earlier"))
  resumed = stream(pipeline.DataIterator.saved_autotune(str(tmp_path / "earlier")))
  resumed.restore(str(tmp_path / "earlier"))
  assert resumed.state() == {"batches": 3}
  assert_same_batches(expected, [next(resumed) for _ in range(4)])
  # It goes on saving with autotuning, which the next resume keeps.
  resumed.save(str(tmp_path / "later"))
  assert pipeline.DataIterator.saved_autotune(str(tmp_path / "later"))

  # A new stream's pipeline cannot hold that position: a clear error, not tf.data's.
  with pytest.raises(
    UserError, match=r"saved with tf.data autotuning on, this pipeline has it off"
  ):
    stream(False).restore(str(tmp_path / "earlier"))
  for it in (earlier, resumed):
    it.close()


def test_new_position_records_no_autotuning_and_resumes_exactly(configured, tmp_path):
  new = stream(False)
  for _ in range(2):
    next(new)
  new.save(str(tmp_path / "new"))
  expected = [next(new) for _ in range(3)]
  assert not pipeline.DataIterator.saved_autotune(str(tmp_path / "new"))
  resumed = stream(False)
  resumed.restore(str(tmp_path / "new"))
  assert_same_batches(expected, [next(resumed) for _ in range(3)])


def run_bindings(corpus, model_dir, steps, reader="auto") -> list[str]:
  return [
    *TINY,
    *corpus.bindings(),
    f"MODEL_DIR = '{model_dir}'",
    f"TRAIN_STEPS = {steps}",
    f"data_reader.kind = '{reader}'",
  ]


def train(corpus, model_dir, steps, reader="auto"):
  return conftest.train_in_process(
    ["runs/quickstart.gin"], run_bindings(corpus, model_dir, steps, reader)
  )


def test_a_run_of_an_earlier_version_resumes_bit_identically(tiny_corpus, tmp_path):
  reference = tmp_path / "reference"
  train(tiny_corpus, reference, 6, reader="seqio")
  assert not pipeline.DataIterator.saved_autotune(str(reference / "data_state" / "6"))

  # A run whose step-4 data position was saved by the earlier pipelines (4 batches consumed);
  # resumed with the default reader, it goes on reading them as they were read.
  run = tmp_path / "run"
  train(tiny_corpus, run, 4, reader="seqio")
  shutil.rmtree(run / "data_state" / "4")
  with gin_utils.fresh_config():
    gin_utils.parse_gin(["runs/quickstart.gin"], run_bindings(tiny_corpus, run, 4))
    earlier = stream(True)
    for _ in range(4):
      next(earlier)
    save_as_earlier_version(earlier, run / "data_state" / "4")
    earlier.close()

  result = train(tiny_corpus, run, 6)
  assert result["step"] == 6
  assert_bit_identical(final_params(run), final_params(reference))
  assert pipeline.DataIterator.saved_autotune(str(run / "data_state" / "6"))
