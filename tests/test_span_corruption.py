"""Span corruption: exact T5 counts, lossless interleaving, sentinel order, statistics, edge cases."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5x_lite.data import span_corruption as sc

C4_VOCAB_SIZE = 32100  # 32000 pieces + 100 extra ids: extra_id_0 is 32099.
FEATURES = {"targets": seqio.Feature(seqio.PassThroughVocabulary(C4_VOCAB_SIZE))}


def is_sentinel(ids, vocab_size=C4_VOCAB_SIZE):
  return ids >= vocab_size - 100


def reconstruct(inputs, targets, vocab_size=C4_VOCAB_SIZE):
  """Replaces each sentinel of `inputs` by the span that follows it in `targets`."""
  spans, current = {}, None
  for t in targets:
    if is_sentinel(t, vocab_size):
      current = int(t)
      spans[current] = []
    else:
      spans[current].append(int(t))
  out = []
  for t in inputs:
    out.extend(spans[int(t)] if is_sentinel(t, vocab_size) else [int(t)])
  return out


def corrupt(tokens, seed):
  inputs, targets = sc.span_corrupt_fn(
    tf.constant(tokens, tf.int32), tf.constant([[seed, 1], [seed, 2]]), C4_VOCAB_SIZE, 0.15, 3.0
  )
  return inputs.numpy(), targets.numpy()


def test_raw_length_for_512_114_is_568():
  assert sc.raw_length_for(512, 114) == 568
  assert sc.corrupted_lengths(568) == (512, 114)
  assert sc.raw_length_for(512, 128) == 568  # The inputs bind first.
  n = sc.raw_length_for(1024, 229)
  i, t = sc.corrupted_lengths(n)
  assert i <= 1024 and t <= 229 and sc.corrupted_lengths(n + 1)[0] > 1024


@pytest.mark.parametrize("seed", range(5))
def test_full_segment_counts_interleaving_and_sentinels(seed):
  tokens = np.random.RandomState(seed).randint(3, 32000, size=568)
  inputs, targets = corrupt(tokens, seed)
  # EOS is appended later: 511 + 1 = 512 and 113 + 1 = 114.
  assert (len(inputs), len(targets)) == (511, 113)
  assert is_sentinel(targets).sum() == 28 and (~is_sentinel(targets)).sum() == 85
  assert is_sentinel(inputs).sum() == 28
  expected = np.arange(32099, 32099 - 28, -1)
  np.testing.assert_array_equal(inputs[is_sentinel(inputs)], expected)
  np.testing.assert_array_equal(targets[is_sentinel(targets)], expected)
  assert targets[0] == 32099  # Targets start with the first sentinel ...
  assert inputs[-1] == 32099 - 27  # ... and inputs end with one: spans alternate, non-noise first.
  assert reconstruct(inputs, targets) == tokens.tolist()


def test_noise_mask_alternates_starting_with_non_noise():
  mask = sc.noise_mask(tf.constant(568), 0.15, 3.0, tf.constant([[7, 7], [8, 8]])).numpy()
  assert not mask[0] and mask[-1]
  starts = np.flatnonzero(np.diff(mask.astype(int)) == 1)
  assert mask.sum() == 85 and len(starts) == 28


def _pipeline(docs, inputs_length=512, targets_length=114, seed=0):
  ds = tf.data.Dataset.from_generator(
    lambda: ({"targets": np.asarray(d, np.int32)} for d in docs),
    output_signature={"targets": tf.TensorSpec([None], tf.int32)},
  )
  with seqio.utils.map_seed_manager(seed):
    ds = sc.span_corruption(ds, {"inputs": inputs_length, "targets": targets_length}, FEATURES)
  return list(ds.as_numpy_iterator())


def test_statistics_over_many_examples():
  rng = np.random.RandomState(0)
  docs = [rng.randint(3, 32000, size=rng.randint(1, 1500)) for _ in range(300)]
  examples = _pipeline(docs, 128, 32)
  assert len(examples) >= 1000
  noise = sum((~is_sentinel(e["targets"])).sum() for e in examples)
  spans = sum(is_sentinel(e["targets"]).sum() for e in examples)
  total = noise + sum((~is_sentinel(e["inputs"])).sum() for e in examples)
  assert abs(noise / total - 0.15) <= 0.005
  assert abs(noise / spans - 3.0) <= 0.1
  # Concatenation loses nothing: every token of every document appears once, in order.
  flat = np.concatenate([reconstruct(e["inputs"], e["targets"]) for e in examples])
  np.testing.assert_array_equal(flat, np.concatenate(docs))


def test_deterministic_for_a_seed():
  docs = [np.arange(3, 2000)] * 3
  a, b, c = _pipeline(docs, seed=1), _pipeline(docs, seed=1), _pipeline(docs, seed=2)
  assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))
  assert any(not np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))


def test_short_and_empty_documents():
  docs = [[], [5], [], [6, 7], [8, 9, 10]]
  examples = _pipeline(docs)
  assert len(examples) == 1  # All concatenated into one short segment; empty ones vanish.
  assert reconstruct(examples[0]["inputs"], examples[0]["targets"]) == [5, 6, 7, 8, 9, 10]
  one = corrupt([42], 0)  # A single token stays in the inputs.
  assert one[0].tolist() == [42] and one[1].tolist() == [32099]


def test_very_long_document_gives_one_random_chunk():
  doc = np.arange(200_000) % 31000 + 3
  examples = _pipeline([doc])
  total = sum(len(reconstruct(e["inputs"], e["targets"])) for e in examples)
  # Chunks are aligned at multiples of MAX_CHUNK_TOKENS; the last one is shorter.
  assert total in (sc.MAX_CHUNK_TOKENS, len(doc) % sc.MAX_CHUNK_TOKENS)
  first = reconstruct(examples[0]["inputs"], examples[0]["targets"])
  assert first[0] - 3 in [k * sc.MAX_CHUNK_TOKENS % 31000 for k in range(4)]
  assert all(len(reconstruct(e["inputs"], e["targets"])) == 568 for e in examples[:-1])


def test_gin_configures_density_and_span_length():
  import gin

  gin.clear_config()
  gin.parse_config(
    [
      "span_corruption_config.noise_density = 0.5",
      "span_corruption_config.mean_noise_span_length = 1.0",
    ]
  )
  try:
    examples = _pipeline([np.arange(3, 500)], 64, 64)
    e = examples[0]
    assert (~is_sentinel(e["targets"])).sum() == round(sc.raw_length_for(64, 64, 0.5, 1.0) * 0.5)
  finally:
    gin.clear_config()


def test_batched_corruption_of_mixed_lengths_matches_per_row_counts():
  rng = np.random.RandomState(3)
  lengths = [568, 1, 2, 3, 17, 568, 100, 567, 5, 568]
  rows = [rng.randint(3, 32000, size=n) for n in lengths]
  inputs, targets = sc.span_corrupt_batch(
    tf.ragged.constant(rows, tf.int32), tf.constant([[4, 1], [4, 2]]), C4_VOCAB_SIZE, 0.15, 3.0
  )
  for n, tokens, i, t in zip(lengths, rows, inputs.to_list(), targets.to_list()):
    i, t = np.asarray(i), np.asarray(t)
    num_noise, num_spans = sc._num_noise(n, 0.15, 3.0)
    if n == 1:  # A single token stays in the inputs.
      assert i.tolist() == tokens.tolist() and t.tolist() == [32099]
      continue
    assert (len(i) + 1, len(t) + 1) == sc.corrupted_lengths(n)
    assert (~is_sentinel(t)).sum() == num_noise and is_sentinel(t).sum() == num_spans
    expected = np.arange(32099, 32099 - num_spans, -1)
    np.testing.assert_array_equal(i[is_sentinel(i)], expected)
    np.testing.assert_array_equal(t[is_sentinel(t)], expected)
    assert t[0] == 32099 and i[-1] == 32099 - num_spans + 1
    assert reconstruct(i, t) == tokens.tolist()
