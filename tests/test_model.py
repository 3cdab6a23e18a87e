"""The Flax T5 module and EncoderDecoderModel: shapes, axes, layouts, masks, cache, loss."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec
import numpy as np
import pytest

from t5x_lite import hf_mapping, models
from t5x_lite.config import REMAT_POLICIES, T5Config
from t5x_lite.errors import UserError

CFG = T5Config(
  name="test-tiny",
  vocab_size=128,
  d_model=32,
  d_ff=64,
  num_heads=4,
  d_kv=8,
  num_encoder_layers=2,
  num_decoder_layers=3,
  feed_forward_proj="relu",
  tie_word_embeddings=True,
  relative_attention_num_buckets=8,
  relative_attention_max_distance=16,
)
V1_1 = dataclasses.replace(
  CFG, name="test-v1_1", feed_forward_proj="gated-gelu", tie_word_embeddings=False
)
LOGICAL_NAMES = {"vocab", "embed", "joined_kv", "heads", "kv", "mlp", "relpos_buckets", "layers"}


def make_batch(rng=0, batch=2, input_length=10, target_length=7, vocab=128):
  r = np.random.RandomState(rng)
  inputs = r.randint(2, vocab, (batch, input_length)).astype(np.int32)
  targets = r.randint(2, vocab, (batch, target_length)).astype(np.int32)
  inputs[-1, input_length // 2 :] = 0
  targets[-1, target_length // 2 :] = 0
  decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], 1)
  return {
    "encoder_input_tokens": inputs,
    "decoder_input_tokens": decoder_inputs,
    "decoder_target_tokens": targets,
    "decoder_loss_weights": (targets > 0).astype(np.float32),
  }


def init(model, seed=0, input_length=10, target_length=7):
  return jax.jit(model.init_params, static_argnums=(1, 2))(
    jax.random.key(seed), input_length, target_length
  )


def random_params(model, seed=0):
  """Random float32 params from the abstract shapes: no init to compile, so tests stay fast."""
  r = np.random.RandomState(seed)
  abstract = model.abstract_params()
  return jax.tree_util.tree_map_with_path(
    lambda path, x: (
      r.standard_normal(x.shape)
      * (
        1.0
        if "embedding" in jax.tree_util.keystr(path)
        else x.shape[-2 if x.ndim > 1 else -1] ** -0.5
      )
    ).astype(np.float32),
    abstract,
  )


def logits_fn(model):
  return jax.jit(model.logits)


@pytest.fixture(scope="module")
def tiny():
  model = models.EncoderDecoderModel(CFG)
  return model, init(model)


@pytest.mark.parametrize(
  "cfg", [CFG, V1_1, dataclasses.replace(CFG, dtype="bfloat16")], ids=["v1_0", "v1_1", "bf16"]
)
def test_shapes_and_dtypes(cfg):
  model = models.EncoderDecoderModel(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(model.abstract_params()))
  params = random_params(model)
  logits = logits_fn(model)(params, make_batch())
  assert logits.shape == (2, 7, cfg.vocab_size) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  assert ("logits_dense" in params["decoder"]) == (not cfg.tie_word_embeddings)
  assert params["encoder"]["layers"]["attention"]["query"]["kernel"].shape == (2, 32, 32)


@pytest.mark.parametrize("scan", [True, False])
def test_every_param_has_logical_axes(scan):
  model = models.EncoderDecoderModel(dataclasses.replace(V1_1, scan_layers=scan))
  abstract, axes = model.abstract_params(), model.param_logical_axes()
  leaves = jax.tree_util.tree_leaves_with_path(abstract)
  specs = jax.tree_util.tree_leaves(axes, is_leaf=lambda x: isinstance(x, PartitionSpec))
  assert len(leaves) == len(specs)
  for (path, leaf), spec in zip(leaves, specs):
    assert isinstance(spec, PartitionSpec) and len(spec) == leaf.ndim, (path, spec)
    assert set(spec) <= LOGICAL_NAMES, (path, spec)
    in_stack = any(getattr(k, "key", None) == "layers" for k in path)
    assert (spec[0] == "layers") == in_stack, (path, spec)


@pytest.mark.parametrize("cfg", [CFG, V1_1], ids=["v1_0", "v1_1"])
def test_scanned_and_unscanned_give_the_same_logits(cfg):
  scanned = models.EncoderDecoderModel(dataclasses.replace(cfg, scan_layers=True))
  flat_cfg = dataclasses.replace(cfg, scan_layers=False)
  params = random_params(scanned, 2)
  flat_params = hf_mapping.from_hf_state_dict(hf_mapping.to_hf_state_dict(params, cfg), flat_cfg)
  batch = make_batch()
  expected = logits_fn(models.EncoderDecoderModel(flat_cfg))(flat_params, batch)
  np.testing.assert_allclose(logits_fn(scanned)(params, batch), expected, atol=1e-5, rtol=0)
  # Unrolling the scan (2 layers per iteration, or the whole stack) keeps parameters and logits.
  for unroll in (2, 99):
    unrolled = models.EncoderDecoderModel(dataclasses.replace(cfg, scan_unroll=unroll))
    np.testing.assert_allclose(logits_fn(unrolled)(params, batch), expected, atol=1e-5, rtol=0)


def test_packed_examples_match_each_alone(tiny):
  model, params = tiny
  logits = logits_fn(model)
  r = np.random.RandomState(3)
  examples = [
    (r.randint(2, 128, 6), r.randint(2, 128, 4)),
    (r.randint(2, 128, 4), r.randint(2, 128, 3)),
  ]
  alone = []
  for inputs, targets in examples:
    inputs, targets = np.append(inputs, 1)[None], np.append(targets, 1)[None]
    decoder_inputs = np.concatenate([[[0]], targets[:, :-1]], 1)
    alone.append(
      np.asarray(
        logits(
          params,
          {
            "encoder_input_tokens": inputs,
            "decoder_input_tokens": decoder_inputs,
            "decoder_target_tokens": targets,
          },
        )[0]
      )
    )

  def pack(parts, length):  # -> tokens, segment ids, positions; each [1, length]
    tokens = np.zeros(length, np.int32)
    segments, positions = np.zeros_like(tokens), np.zeros_like(tokens)
    start = 0
    for seg, part in enumerate(parts, 1):
      tokens[start : start + len(part)], segments[start : start + len(part)] = part, seg
      positions[start : start + len(part)] = np.arange(len(part))
      start += len(part)
    return tokens[None], segments[None], positions[None]

  inputs = [np.append(i, 1) for i, _ in examples]
  targets = [np.append(t, 1) for _, t in examples]
  enc, enc_seg, enc_pos = pack(inputs, 16)
  dec_tgt, dec_seg, dec_pos = pack(targets, 12)
  dec_in, _, _ = pack([np.concatenate([[0], t[:-1]]) for t in targets], 12)
  packed = np.asarray(
    logits(
      params,
      {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": dec_in,
        "decoder_target_tokens": dec_tgt,
        "encoder_segment_ids": enc_seg,
        "decoder_segment_ids": dec_seg,
        "encoder_positions": enc_pos,
        "decoder_positions": dec_pos,
      },
    )[0]
  )
  np.testing.assert_allclose(packed[:5], alone[0], atol=1e-5, rtol=0)
  np.testing.assert_allclose(packed[5:9], alone[1], atol=1e-5, rtol=0)


def test_padding_does_not_change_real_positions(tiny):
  model, params = tiny
  batch = make_batch(batch=1)
  longer = {k: np.pad(v, ((0, 0), (0, 5))) for k, v in batch.items()}
  real = batch["decoder_target_tokens"] > 0
  logits = logits_fn(model)
  np.testing.assert_allclose(
    np.asarray(logits(params, longer))[:, :7][real],
    np.asarray(logits(params, batch))[real],
    atol=1e-5,
    rtol=0,
  )


@pytest.mark.parametrize(
  "cfg", [CFG, dataclasses.replace(V1_1, scan_layers=False)], ids=["scanned", "unscanned_v1_1"]
)
def test_cached_decoding_equals_full_forward(cfg):
  model = models.EncoderDecoderModel(cfg)
  params = random_params(model, 4)
  batch = make_batch()
  batch["decoder_target_tokens"] = np.where(
    batch["decoder_target_tokens"] > 0, batch["decoder_target_tokens"], 5
  )  # No padding.
  full = logits_fn(model)(params, batch)
  enc, module = batch["encoder_input_tokens"], model.module

  @jax.jit
  def run(params):
    encoded = module.apply({"params": params}, enc, method=module.encode)
    _, state = module.apply(
      {"params": params},
      encoded,
      enc,
      batch["decoder_input_tokens"],
      decode=True,
      mutable=["cache"],
      method=module.decode,
    )
    cache, steps = state["cache"], []
    for t in range(7):
      logits, state = module.apply(
        {"params": params, "cache": cache},
        encoded,
        enc,
        batch["decoder_input_tokens"][:, t : t + 1],
        decode=True,
        mutable=["cache"],
        method=module.decode,
      )
      cache = state["cache"]
      steps.append(logits[:, 0])
    return steps

  steps = run(params)
  np.testing.assert_allclose(jnp.stack(steps, 1), full, atol=1e-4, rtol=0)


def test_greedy_decode_matches_uncached_argmax_and_stops_at_eos(tiny):
  model, params = tiny
  enc = make_batch()["encoder_input_tokens"]
  # Make EOS likely so that the stop rule is exercised.
  params = jax.tree_util.tree_map(lambda x: x, params)
  params["token_embedder"]["embedding"] = params["token_embedder"]["embedding"].at[1].multiply(3.0)
  got = np.asarray(jax.jit(model.greedy_decode, static_argnums=2)(params, enc, 6))
  # Uncached reference: a fixed-length causal decoder; position t only sees tokens <= t.
  logits = logits_fn(model)
  tokens = np.zeros((2, 7), np.int32)
  for t in range(6):
    step = logits(params, {"encoder_input_tokens": enc, "decoder_input_tokens": tokens})
    tokens[:, t + 1] = np.argmax(step[:, t], -1)
  expected = tokens[:, 1:]
  for row, want in zip(got, expected):
    eos = np.where(want == 1)[0]
    stop = eos[0] + 1 if len(eos) else len(want)
    np.testing.assert_array_equal(row[:stop], want[:stop])
    assert np.all(row[stop:] == 0)


def test_loss_fn_sums_and_normalisations(tiny):
  model, params = tiny
  batch = make_batch()
  loss_fn = jax.jit(model.loss_fn, static_argnames=("z_loss", "loss_normalizing_factor"))
  loss, aux = loss_fn(params, batch, None, z_loss=0.0)
  logits = np.asarray(logits_fn(model)(params, batch), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  w = batch["decoder_loss_weights"]
  nll = -np.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, (nll * w).sum(), rtol=1e-5)
  assert float(aux["weight_sum"]) == w.sum() and float(aux["z_loss"]) == 0.0
  correct = ((logits.argmax(-1) == batch["decoder_target_tokens"]) * w).sum()
  assert float(aux["correct"]) == correct
  with_z, aux_z = loss_fn(params, batch, None, z_loss=1e-4)
  assert float(aux_z["z_loss"]) > 0 and np.isclose(with_z, loss + aux_z["z_loss"], rtol=1e-6)
  weights = jnp.asarray(w)
  per_token, _ = loss_fn(
    params, batch, None, z_loss=1e-4, loss_normalizing_factor=models.NUM_REAL_TARGET_TOKENS
  )
  np.testing.assert_allclose(per_token, aux_z["loss"] / w.sum(), rtol=1e-6)
  # The earlier lower-case names mean the same.
  for old in ("num_real_target_tokens", "num_target_tokens"):
    assert float(models.loss_normalizer(old, weights)) == w.sum()
  assert float(models.loss_normalizer("NUM_TOTAL_TARGET_TOKENS", weights)) == w.size
  assert float(models.loss_normalizer("num_total_target_tokens", weights)) == w.size
  assert float(models.loss_normalizer(14.0, weights)) == 14.0
  assert float(models.loss_normalizer(None, weights)) == 1.0
  with pytest.raises(
    UserError, match="unknown loss_normalizing_factor 'tokens'; use 'NUM_REAL_TARGET_TOKENS'"
  ):
    models.loss_normalizer("tokens", weights)
  scores = jax.jit(model.score_batch)(params, batch)
  np.testing.assert_allclose(scores, -(nll * w).sum(-1), rtol=1e-5)


def test_dropout_only_when_enabled():
  cfg = dataclasses.replace(CFG, dropout_rate=0.3, num_encoder_layers=1, num_decoder_layers=1)
  model = models.EncoderDecoderModel(cfg)
  params = random_params(model)
  batch = make_batch()
  loss = jax.jit(lambda p, rng: model.loss_fn(p, batch, rng)[0])
  a = loss(params, None)
  assert a == loss(params, None)
  b, c = loss(params, jax.random.key(1)), loss(params, jax.random.key(2))
  assert a != b and b != c


@pytest.mark.parametrize(
  "policies",
  [
    ("none", "save_attention_out"),
    pytest.param(REMAT_POLICIES, marks=pytest.mark.slow),
  ],
  ids=["named", "all"],
)
def test_remat_policies_keep_loss_and_gradients(policies):
  cfg = dataclasses.replace(CFG, num_encoder_layers=1, num_decoder_layers=1)
  params = random_params(models.EncoderDecoderModel(cfg))
  batch = make_batch()
  results = []
  for policy in policies:
    model = models.EncoderDecoderModel(dataclasses.replace(cfg, remat_policy=policy))
    grad_fn = jax.jit(jax.value_and_grad(lambda p, model=model: model.loss_fn(p, batch, None)[0]))
    results.append(grad_fn(params))
  for loss, grads in results[1:]:
    np.testing.assert_allclose(loss, results[0][0], rtol=1e-6)
    jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, results[0][1]
    )


def test_runs_sharded_with_logical_rules(tiny):
  model, params = tiny
  devices = np.array(jax.devices()[:8])
  if devices.size < 8:
    pytest.skip("needs 8 devices")
  mesh = Mesh(devices.reshape(2, 4), ("data", "model"))
  rules = (
    ("batch", "data"),
    ("vocab", "model"),
    ("joined_kv", "model"),
    ("heads", "model"),
    ("mlp", "model"),
    ("embed", None),
    ("kv", None),
    ("length", None),
    ("relpos_buckets", None),
    ("layers", None),
  )
  shardings = nn.logical_to_mesh_sharding(model.param_logical_axes(), mesh, rules)
  batch = make_batch(batch=4)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    sharded = jax.device_put(params, shardings)
    loss = jax.jit(lambda p, b: model.loss_fn(p, b, None)[0])(sharded, batch)
  np.testing.assert_allclose(loss, jax.jit(model.loss_fn)(params, batch, None)[0], rtol=1e-5)
