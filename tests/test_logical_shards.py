"""The global batch sequence and its saved position do not depend on the process count.

Processes are simulated in-process: each "process" calls the same per-process builder the trainer
calls (pipeline.train_iterator) with its own process index, on real seqio pipelines.
"""

import os

import gin
import jax
import numpy as np
import pytest

from t5x_lite import partitioning, resume_check
from t5x_lite.data import logical_shards, pipeline, testing
from t5x_lite.errors import UserError
import t5x_lite.tasks  # noqa: F401  (registers the tasks)

LENGTHS = {"inputs": 32, "targets": 8}
BATCH, COUNT, STEPS = 8, 4, 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  docs = testing.make_documents(160, seed=1, max_words=60)
  return {
    "train": testing.write_text_shards(root, "train", docs[:140], num_shards=4),
    "validation": testing.write_text_shards(root, "validation", docs[140:], num_shards=1),
    "vocab": testing.train_tiny_vocab(root),
  }


def configure(corpus, train=None, validation=None) -> None:
  """Gin for the text task over the corpus, its train or validation files replaceable."""
  gin.clear_config()
  gin.parse_config(
    [
      f"text_corpus.train_files = '{train or corpus['train']}'",
      f"text_corpus.validation_files = '{validation or corpus['validation']}'",
      f"task_vocabulary.path = '{corpus['vocab']}'",
      f"logical_shards.count = {COUNT}",
    ]
  )


@pytest.fixture
def configured(corpus):
  configure(corpus)
  yield corpus
  gin.clear_config()


def iterators(processes: int, seed: int = 3) -> list[pipeline.DataIterator]:
  return [
    pipeline.train_iterator(
      "text_span_corruption", LENGTHS, BATCH, seed=seed, process_index=p, process_count=processes
    )
    for p in range(processes)
  ]


def global_batch(its) -> dict[str, np.ndarray]:
  """The processes' rows stacked in process order: what make_array_from_process_local_data builds."""
  parts = [next(it) for it in its]
  assert all(p["encoder_input_tokens"].shape[0] == BATCH // len(its) for p in parts)
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def assert_same(a: dict, b: dict) -> None:
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_global_batches_equal_on_1_2_4_processes(configured):
  runs = {n: iterators(n) for n in (1, 2, 4)}
  assert [it.shards for it in runs[2]] == [[0, 1], [2, 3]]  # each builds only its shards
  for _ in range(STEPS):
    one = global_batch(runs[1])
    assert len({r.tobytes() for r in one["encoder_input_tokens"]}) > 1  # real, varied rows
    assert_same(one, global_batch(runs[2]))
    assert_same(one, global_batch(runs[4]))


def test_eval_batches_equal_on_1_and_4_processes(configured):
  one = next(pipeline.eval_dataset("text_span_corruption", LENGTHS, BATCH).as_numpy_iterator())
  parts = [
    next(
      pipeline.eval_dataset(
        "text_span_corruption", LENGTHS, BATCH, process_index=p, process_count=4
      ).as_numpy_iterator()
    )
    for p in range(4)
  ]
  assert_same(one, {k: np.concatenate([p[k] for p in parts]) for k in one})


def test_position_saved_on_2_processes_restores_on_1_and_4(configured, tmp_path):
  two = iterators(2)
  for _ in range(2):
    global_batch(two)
  saved = str(tmp_path / "data_state" / "2")
  for it in two:  # both processes write into the step's directory
    it.save(saved)
  assert sorted(os.listdir(saved)) == [f"shard_{j}" for j in range(COUNT)]
  expected = [global_batch(two) for _ in range(2)]
  for processes in (1, 4):
    resumed = iterators(processes)
    for it in resumed:
      it.restore(saved)
      assert it.state() == {"batches": 2}
    for batch in expected:
      assert_same(batch, global_batch(resumed))


def test_a_process_count_not_dividing_the_shards_names_the_allowed_ones(configured):
  with pytest.raises(
    UserError,
    match=r"3 processes cannot share the 4 logical data shards .*"
    r"divides 4 \(1, 2, 4\)",
  ):
    iterators(3)


def test_a_count_not_dividing_the_batch_is_named(configured):
  gin.bind_parameter("logical_shards.count", 3)
  with pytest.raises(
    UserError,
    match=r"BATCH_SIZE=8 is not divisible by logical_shards.count=3.*"
    r"\(1, 2, 4, 8\)",
  ):
    iterators(1)


def test_default_count_fits_the_quickstart_and_64_hosts():
  gin.clear_config()
  assert logical_shards.make_plan(16).count == 16  # runs/quickstart.gin's batch
  assert logical_shards.make_plan(2048, 63, 64).shards == range(63, 64)
  assert logical_shards.make_plan(128, 1, 2).rows == range(64, 128)


def test_rows_match_where_the_batch_sharding_puts_them():
  mesh = partitioning.make_mesh(2)
  plan = logical_shards.make_plan(16, count=8)
  logical_shards.check_process_rows(plan, partitioning.data_sharding(mesh))
  # A process that claims a block its devices do not hold is refused (here: all of them hold
  # every row, so "process 0 of 2" would read half the batch its devices expect).
  with pytest.raises(UserError, match=r"reads rows \[0, 8\) of the global batch"):
    logical_shards.check_process_rows(
      logical_shards.make_plan(16, 0, 2, count=8), partitioning.data_sharding(mesh)
    )
  assert jax.process_count() == 1


def test_a_per_process_data_position_is_a_clear_error(configured, tmp_path):
  old = tmp_path / "data_state" / "6"
  (old / "process_0").mkdir(parents=True)
  it = iterators(1)[0]
  with pytest.raises(UserError, match="saved per process by an older version.*allow_data_change"):
    it.restore(str(old))


def test_process_count_is_no_data_change_but_the_old_layout_is():
  new = {"mixture_or_task_name": "t", "batch_size": 8, "logical_shards": 4}
  assert resume_check.data_changes({"data": dict(new)}, new, None) == []
  assert resume_check.data_changes({"data": dict(new, logical_shards=8)}, new, None) == [
    "logical_shards 8 -> 4"
  ]
  older = {"mixture_or_task_name": "t", "batch_size": 8, "process_count": 2}
  assert resume_check.data_changes({"data": older}, new, None) == [
    resume_check.PER_PROCESS_POSITION
  ]
  oldest = {"mixture_or_task_name": "t", "task_feature_lengths": {"inputs": 32, "targets": 8}}
  assert resume_check.data_changes(
    oldest, dict(new, task_feature_lengths=oldest["task_feature_lengths"]), saved_process_count=2
  ) == [resume_check.PER_PROCESS_POSITION]


def test_a_shard_without_documents_is_named(corpus, tmp_path):
  few = testing.write_text_shards(tmp_path, "few", testing.make_documents(3, seed=2), 1)
  configure(corpus, train=few)
  try:
    with pytest.raises(
      UserError,
      match=r"the train split .* gives logical data shard 3 of 4 no document.*lower "
      r"logical_shards.count",
    ):
      next(pipeline.train_iterator("text_span_corruption", LENGTHS, 4))
  finally:
    gin.clear_config()


def test_a_validation_split_with_fewer_documents_than_shards_is_named(corpus, tmp_path):
  # Eval batches stack one part per logical shard: 2 documents leave shards 2 and 3 without any,
  # and the error says why (not only "no documents").
  from t5x_lite import training

  two = testing.write_text_shards(tmp_path, "two", testing.make_documents(2, seed=5), 1)
  configure(corpus, validation=two)
  try:
    with pytest.raises(
      UserError, match=r"the validation split .* gives logical data shard 2 of 4 no document.*lower"
    ):
      eval_ds = pipeline.eval_dataset("text_span_corruption", LENGTHS, BATCH)
      # No batch reaches the trainer, so none is needed.
      training.evaluate(None, None, eval_ds, 2, "text_span_corruption", shard_count=COUNT)
  finally:
    gin.clear_config()


def test_shards_sharing_a_file_read_the_same_from_memory_or_from_the_file(corpus, tmp_path):
  """With fewer files than shards each shard reads every k-th line of a file it shares, and
  keeps those lines in memory after its first epoch: the batches are those of reading the file
  again every epoch, over several epochs."""
  import dataclasses

  from t5x_lite.data import registry, stream_iterator

  two_files = testing.write_text_shards(tmp_path, "two", testing.make_documents(60, seed=7), 2)
  configure(corpus, train=two_files)
  try:
    plan = logical_shards.make_plan(BATCH)
    provider = registry.refresh("text_span_corruption")
    config = pipeline._stream_config(provider, "train", LENGTHS, plan, 3, shuffle=True)
    assert not config.file_sharded and config.lines_in_memory
    from_file = dataclasses.replace(config, lines_in_memory_bytes=0)
    assert not from_file.lines_in_memory
    its = [stream_iterator.StreamIterator(c, list(plan.shards)) for c in (config, from_file)]

    def epochs_begun():
      return min(start[0] for start in its[0].position().starts.values())

    for _ in range(400):  # until every shard has read its lines from memory in a later epoch
      assert_same(next(its[0]), next(its[1]))
      if epochs_begun() >= 2:
        break
    assert epochs_begun() >= 2
  finally:
    gin.clear_config()


STOPPED_PART_WAY = """
import gc, sys
import gin
from t5x_lite.data import pipeline
import t5x_lite.tasks
gin.parse_config(sys.argv[1:])
it = pipeline.train_iterator("text_span_corruption", {"inputs": 32, "targets": 8}, 8)
next(it)
it.close()
del it
gc.collect()
print("stopped", flush=True)
"""


def test_a_stream_stopped_part_way_leaves_tf_nothing_to_warn_about(corpus, tmp_path):
  """Shards sharing a file keep its lines in memory; a run that ends before they were all read
  (here: one batch of 4 shards of 250 lines) must not make TF discard a partly filled cache with
  a warning per shard at the end of the run (cache_dataset_ops.cc "did not fully read")."""
  import subprocess
  import sys

  one_file = testing.write_text_shards(tmp_path, "one", testing.make_documents(1000, seed=3), 1)
  bindings = [
    f"text_corpus.train_files = '{one_file}'",
    f"text_corpus.validation_files = '{one_file}'",
    f"task_vocabulary.path = '{corpus['vocab']}'",
    f"logical_shards.count = {COUNT}",
  ]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", JAX_PLATFORMS="cpu")
  done = subprocess.run(
    [sys.executable, "-c", STOPPED_PART_WAY, *bindings],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  assert done.returncode == 0 and "stopped" in done.stdout, done.stderr[-3000:]
  assert "did not fully read the dataset being cached" not in done.stderr
