"""get_dataset / DataIterator on real seqio pipelines over a tiny local corpus and vocabulary."""

import gin
import numpy as np
import pytest

from t5x_lite.data import pipeline, testing
from t5x_lite.errors import UserError
import t5x_lite.tasks  # noqa: F401  (registers the tasks)

LENGTHS = {"inputs": 32, "targets": 8}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  docs = testing.make_documents(160, seed=1, max_words=60)
  return {
    "train": testing.write_text_shards(root, "train", docs[:140], num_shards=4),
    "validation": testing.write_text_shards(root, "validation", docs[140:], num_shards=1),
    "jsonl": testing.write_jsonl_shards(root, "jsonl", docs, num_shards=2, field="body"),
    "vocab": testing.train_tiny_vocab(root),
  }


@pytest.fixture
def configured(corpus):
  gin.clear_config()
  gin.parse_config(
    [
      f"text_corpus.train_files = '{corpus['train']}'",
      f"text_corpus.validation_files = '{corpus['validation']}'",
      f"jsonl_corpus.train_files = '{corpus['jsonl']}'",
      "jsonl_corpus.text_field = 'body'",
      f"task_vocabulary.path = '{corpus['vocab']}'",
    ]
  )
  yield corpus
  gin.clear_config()


def take(ds, n):
  return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


def test_features_shapes_and_dtypes(configured):
  batch = take(pipeline.get_dataset("text_span_corruption", LENGTHS, "train", 4), 1)[0]
  assert set(batch) == {
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
  }
  assert batch["encoder_input_tokens"].shape == (4, 32)
  assert batch["decoder_target_tokens"].shape == (4, 8)
  assert all(v.dtype == np.int32 for v in batch.values())
  # Full segments: inputs and targets fill their lengths exactly and end with EOS (1).
  assert (batch["encoder_input_tokens"][:, -1] == 1).all()
  assert (batch["decoder_target_tokens"][:, -1] == 1).all()
  np.testing.assert_array_equal(
    batch["decoder_input_tokens"][:, 1:], batch["decoder_target_tokens"][:, :-1]
  )
  assert (batch["decoder_input_tokens"][:, 0] == 0).all()
  vocab = pipeline.get_vocabulary("text_span_corruption")
  assert batch["decoder_target_tokens"][0, 0] == vocab.vocab_size - 1  # <extra_id_0>


def test_packing_puts_several_examples_in_a_row(configured, tmp_path):
  # Span corruption concatenates groups of 128 documents and cuts them into examples of the full
  # length; a group shorter than that is one short example. 260 documents of a word or two: three
  # groups, each far shorter than a row (about 170, 180 and 7 input tokens), so they share one.
  short = testing.make_documents(260, seed=2, min_words=1, max_words=2)
  gin.bind_parameter(
    "jsonl_corpus.train_files",
    testing.write_jsonl_shards(tmp_path, "short", short, 1, field="body"),
  )
  rows = take(
    pipeline.get_dataset(
      "jsonl_span_corruption",
      {"inputs": 2048, "targets": 512},
      "train",
      1,
      shuffle=False,
      repeat=False,
      use_packing=True,
    ),
    100,
  )
  assert max(int(r["encoder_segment_ids"].max()) for r in rows) >= 2, "nothing was packed"
  for row in rows:
    for side, tokens in (("encoder", "encoder_input_tokens"), ("decoder", "decoder_target_tokens")):
      segments, positions = row[f"{side}_segment_ids"][0], row[f"{side}_positions"][0]
      assert segments.dtype == positions.dtype == np.int32
      used = segments[segments > 0]
      # Segments 1, 2, ... follow each other, each with positions 0, 1, ... of its own and its
      # own EOS (1) on both sides.
      assert list(np.unique(used)) == list(range(1, used.max() + 1))
      assert (np.diff(used) >= 0).all()
      for s in range(1, used.max() + 1):
        np.testing.assert_array_equal(positions[segments == s], np.arange((segments == s).sum()))
      assert (row[tokens][0] == 1).sum() == used.max()
    assert row["encoder_segment_ids"].max() == row["decoder_segment_ids"].max()


def test_shards_read_disjoint_data(configured):
  rows = []
  for shard in range(2):
    ds = pipeline.get_dataset(
      "text_span_corruption",
      LENGTHS,
      "train",
      4,
      shard_id=shard,
      num_shards=2,
      shuffle=False,
      repeat=False,
    )
    batches = take(ds, 1000)
    assert batches and batches[0]["encoder_input_tokens"].shape == (2, 32)
    rows.append({r.tobytes() for b in batches for r in b["encoder_input_tokens"]})
  assert rows[0] and rows[1] and not rows[0] & rows[1]


def test_batch_must_divide_into_shards(configured):
  with pytest.raises(UserError, match="not divisible"):
    pipeline.get_dataset("text_span_corruption", LENGTHS, "train", 6, shard_id=0, num_shards=4)


def test_unknown_task_lists_known_names(configured):
  with pytest.raises(UserError, match="unknown task.*quickstart_span_corruption"):
    pipeline.get_dataset("no_such_task", LENGTHS, "train", 2)


def test_same_seed_same_batches_other_seed_differs(configured):
  get = lambda seed: take(
    pipeline.get_dataset("text_span_corruption", LENGTHS, "train", 4, seed=seed), 2
  )
  a, b, c = get(3), get(3), get(4)
  assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
  assert not all(
    np.array_equal(x["encoder_input_tokens"], y["encoder_input_tokens"]) for x, y in zip(a, c)
  )


def test_iterator_restore_continues_at_next_batch(configured, tmp_path):
  make = lambda: pipeline.DataIterator(
    pipeline.get_dataset("text_span_corruption", LENGTHS, "train", 4, seed=5)
  )
  it = make()
  for _ in range(3):
    next(it)
  it.save(str(tmp_path / "it"))
  expected = [next(it) for _ in range(4)]  # Crosses an epoch boundary of the tiny corpus too.
  restored = make()
  restored.restore(str(tmp_path / "it"))
  assert restored.state() == {"batches": 3}
  got = [next(restored) for _ in range(4)]
  for e, g in zip(expected, got):
    for k in e:
      np.testing.assert_array_equal(e[k], g[k])


def test_restore_from_missing_directory_is_a_user_error(configured, tmp_path):
  it = pipeline.DataIterator(pipeline.get_dataset("text_span_corruption", LENGTHS, "train", 2))
  with pytest.raises(UserError, match="no data iterator checkpoint"):
    it.restore(str(tmp_path / "nothing"))


def test_validation_split(configured):
  batches = take(
    pipeline.get_dataset(
      "text_span_corruption", LENGTHS, "validation", 2, shuffle=False, repeat=False
    ),
    1000,
  )
  assert 0 < len(batches) < 100


def test_stream_features_equal_seqios_converter():
  """The streams' EOS, trimming, padding and teacher forcing (streams._features) are seqio's
  append_eos_after_trim + EncDecFeatureConverter(pack=False), example for example."""
  import seqio
  import tensorflow as tf

  from t5x_lite.data import streams

  lengths = {"inputs": 6, "targets": 4}
  examples = [([5, 6, 7], [8, 9]), ([], [3]), ([4] * 9, [7] * 9), ([2, 3, 4, 5, 6], [3, 4, 5])]
  vocab = seqio.PassThroughVocabulary(100, eos_id=1)
  features = {k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")}
  ds = tf.data.Dataset.from_generator(
    lambda: ({"inputs": i, "targets": t} for i, t in examples),
    output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")},
  )
  ds = seqio.preprocessors.append_eos_after_trim(ds, features, lengths)
  expected = list(seqio.EncDecFeatureConverter(pack=False)(ds, lengths).as_numpy_iterator())
  ours = streams._features(
    tf.ragged.constant([i for i, _ in examples], dtype=tf.int32),
    tf.ragged.constant([t for _, t in examples], dtype=tf.int32),
    lengths,
  )
  for row, want in enumerate(expected):
    for name in streams.FEATURES:
      np.testing.assert_array_equal(ours[name][row].numpy(), want[name], err_msg=name)
