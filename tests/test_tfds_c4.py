"""The C4 TFDS task end to end: `c4/en` prepared in a data dir (TFRecord shards and
dataset_info.json written the way `tfds build` writes them, with TFDS's own serializer), read by
the trainer's streams and by seqio's TFDS loader, span corruption, and a few training steps."""

import json
import pathlib

from conftest import ONE_DATA_SHARD
import gin
import pytest
import tensorflow as tf

tfds = pytest.importorskip("tensorflow_datasets")

from t5x_lite import gin_utils, training  # noqa: E402
from t5x_lite.data import pipeline, testing  # noqa: E402
import t5x_lite.tasks  # noqa: E402,F401

VERSION = "3.1.0"
SHARDS, PER_SHARD = 2, 32


def prepare(data_dir) -> None:
  """A prepared c4/en: both splits in SHARDS TFRecord files of PER_SHARD examples each."""
  builder = tfds.builder(f"c4/en:{VERSION}", data_dir=str(data_dir))
  pathlib.Path(builder.data_dir).mkdir(parents=True)
  docs = iter(testing.make_documents(2 * SHARDS * PER_SHARD, seed=7))
  splits = []
  for name in ("train", "validation"):
    template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_dir, dataset_name="c4", split=name, filetype_suffix="tfrecord"
    )
    split = tfds.core.SplitInfo(
      name=name, shard_lengths=[PER_SHARD] * SHARDS, num_bytes=0, filename_template=template
    )
    for path in split.filepaths:
      with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(PER_SHARD):
          example = {
            "text": next(docs),
            "timestamp": "2019-04-25",
            "url": f"https://x/{i}",
            "content-length": "0",
            "content-type": "text/plain",
          }
          writer.write(builder.info.features.serialize_example(example))
    splits.append(split)
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.info.write_to_directory(builder.data_dir)


@pytest.fixture
def c4_data_dir(tmp_path):
  prepare(tmp_path / "tensorflow_datasets")
  return tmp_path / "tensorflow_datasets"


def bindings(tmp_path, data_dir):
  vocab = testing.train_tiny_vocab(tmp_path, vocab_size=60)
  return [
    f"C4_TFDS_DATA_DIR = '{data_dir}'",
    f"C4_TFDS_VERSION = '{VERSION}'",
    f"C4_VOCABULARY = '{vocab}'",
    f"MODEL_DIR = '{tmp_path / 'run'}'",
    "model_config.name = 't5-efficient-tiny-dm64-ff128-nh2-kv32-nl2'",
    "model_config.vocab_size = 256",
    "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}",
    "BATCH_SIZE = 8",
    ONE_DATA_SHARD,  # the TFDS source is what is tested here, not how its examples are split
    "TRAIN_STEPS = 3",
    "CHECKPOINT_PERIOD = 3",
    "EVAL_PERIOD = 3",
    "train.eval_steps = 1",
    "train.log_period = 1",
    "model_config.dtype = 'float32'",
    "train.num_microbatches = 1",
  ]


def test_c4_tfds_trains_a_few_steps(tmp_path, c4_data_dir, capsys):
  gin.clear_config()
  try:
    gin_utils.parse_gin(["runs/pretrain.gin"], bindings(tmp_path, c4_data_dir))
    batch = next(
      iter(
        pipeline.get_dataset(
          "c4_span_corruption", {"inputs": 32, "targets": 8}, "validation", 8, shuffle=False
        )
      )
    )
    result = training.train()
  finally:
    gin.clear_config()
  # Span corruption ran over the TFDS text: sentinels (the top ids of the 60 + 100) in the inputs.
  assert batch["encoder_input_tokens"].shape == (8, 32)
  assert (batch["encoder_input_tokens"].numpy() >= 60).any()
  assert result["step"] == 3
  rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  # Step 1 (compilation) has no step time of its own: its time is compile_s, on a console line of
  # its own, and the first timed window (step 2) is an ordinary step.
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3]
  assert train_rows[0]["step_time_s"] is None and train_rows[0]["mfu"] is None
  assert "compile_s" in train_rows[0] and all("compile_s" not in r for r in train_rows[1:])
  assert train_rows[1]["step_time_s"] < train_rows[0]["compile_s"] / 2
  assert "compiled the train step in" in capsys.readouterr().out
  assert all(0 < r["mfu"] <= 1 for r in train_rows[1:])
  assert [r["step"] for r in rows if "eval_loss" in r] == [0, 3]
