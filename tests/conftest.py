"""Test-wide settings (8 CPU devices for sharding tests, TF kept quiet and off accelerators), the
`unit` / `integration` markers, and the tiny model and corpus the training tests share.

Markers, given per file by `pytest_collection_modifyitems` below: `integration` for the files whose
tests start commands in subprocesses or train, export and resume end to end (`INTEGRATION_FILES`),
`unit` for every other test. A `-m` on the command line replaces the default `-m "not slow"`:
`pytest -m "unit and not slow"` runs the in-process checks of the default run alone,
`pytest -m "integration and not slow"` the rest of it.
"""

import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# One persistent compilation cache for the whole session: tests and the training subprocesses
# they start compile the same tiny models again and again.
import tempfile  # noqa: E402

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="t5x_lite_jax_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import dataclasses  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402

# The tiny model and task that the training tests run (a few seconds per compile on CPU).
TINY_MODEL = [
  "model_config.name = 't5-efficient-tiny-dm64-ff128-nh2-kv32-nl2'",
  "model_config.vocab_size = 256",
  "MIXTURE_OR_TASK_NAME = 'text_span_corruption'",
  "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}",
  "BATCH_SIZE = 8",
]

# One logical data shard for tests whose assertions do not depend on the data's sharding: the
# default count (gcd(BATCH_SIZE, 64), 8 here) builds 8 train and 8 eval pipelines, each tracing
# the whole seqio preprocessing, which takes longer than the tiny model's training.
# The tests of the sharding itself (test_logical_shards.py, test_multiprocess.py) keep the default.
ONE_DATA_SHARD = "logical_shards.count = 1"


# The train command's flags for one step of the tiny model, no evaluation: the tests that run
# it share them, so a session's persistent compilation cache holds the step after the first.
TINY_TRAIN_FLAGS = [
  "--gin_file=runs/quickstart.gin",
  *[f"--gin.{binding.replace(' = ', '=', 1)}" for binding in [*TINY_MODEL, ONE_DATA_SHARD]],
  "--gin.train.eval_steps=0",
  "--gin.TRAIN_STEPS=1",
  "--gin.CHECKPOINT_PERIOD=1",
  "--gin.EVAL_PERIOD=1",
]


@dataclasses.dataclass(frozen=True)
class TinyCorpus:
  """Text shards for `text_span_corruption` and a 100-piece vocabulary trained on them."""

  root: pathlib.Path  # tests may add files of their own here (never named train-* or val-*)
  train: str  # file patterns
  validation: str
  vocab: str

  def bindings(self) -> list[str]:
    return [
      f"text_corpus.train_files = '{self.train}'",
      f"text_corpus.validation_files = '{self.validation}'",
      f"task_vocabulary.path = '{self.vocab}'",
    ]

  def flags(self) -> list[str]:
    """The same as command-line flags."""
    return [f"--gin.{b.replace(' = ', '=', 1)}" for b in self.bindings()]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> TinyCorpus:
  from t5x_lite.data import testing

  root = tmp_path_factory.mktemp("tiny_corpus")
  docs = testing.make_documents(200, seed=3, max_words=80)
  return TinyCorpus(
    root,
    testing.write_text_shards(root, "train", docs[:180], 2),
    testing.write_text_shards(root, "val", docs[180:], 1),
    testing.train_tiny_vocab(root, vocab_size=100),
  )


def train_in_process(gin_files, bindings, stop_at_step=None) -> dict:
  """`training.train` on a fresh gin config; the caller's config is restored afterwards."""
  from t5x_lite import gin_utils, training

  with gin_utils.fresh_config():
    gin_utils.parse_gin(gin_files, bindings)
    return training.train(stop_at_step=stop_at_step)


INTEGRATION_FILES = {
  "test_no_tensorflow.py",
  "test_bad_inputs.py",
  "test_docs.py",
  "test_export_import.py",
  "test_hf_tokenizer.py",
  "test_infer.py",
  "test_memory_fit.py",
  "test_multiprocess.py",
  "test_newcomer.py",
  "test_plan.py",
  "test_resume_safety.py",
  "test_tfds_c4.py",
  "test_tokenized_cache.py",
  "test_train_e2e.py",
  "test_user_tasks.py",
}


def pytest_collection_modifyitems(config, items):
  for item in items:
    integration = item.path.name in INTEGRATION_FILES
    item.add_marker(pytest.mark.integration if integration else pytest.mark.unit)
