"""The same training steps on 1 device and on 4x2 / 2x4 meshes of 8 CPU devices."""

import dataclasses

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from t5x_lite import config, hf_mapping, partitioning
from t5x_lite.models import EncoderDecoderModel
from t5x_lite.trainer import Trainer

LENGTHS = {"inputs": 32, "targets": 16}
VOCAB = 256


def tiny_config(**overrides):
  cfg = config.resolve_model_name("t5-efficient-tiny-dm64-ff256-nh4-kv16-nl2")
  return dataclasses.replace(cfg, vocab_size=VOCAB, **overrides)


def random_batches(num_batches, batch_size, seed=0):
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(num_batches):
    inputs = rng.integers(2, VOCAB, (batch_size, LENGTHS["inputs"]), dtype=np.int32)
    targets = rng.integers(2, VOCAB, (batch_size, LENGTHS["targets"]), dtype=np.int32)
    inputs[:, -5:] = 0  # some padding
    targets[:, -3:] = 0
    decoder_inputs = np.concatenate([np.zeros((batch_size, 1), np.int32), targets[:, :-1]], 1)
    batches.append(
      {
        "encoder_input_tokens": inputs,
        "decoder_input_tokens": decoder_inputs,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.int32),
      }
    )
  return batches


def run(mesh_shape, cfg, steps=3, num_microbatches=1):
  devices = jax.devices()[: mesh_shape[0] * mesh_shape[1]]
  mesh = partitioning.make_mesh(mesh_shape[1], devices=devices)
  trainer = Trainer(
    EncoderDecoderModel(cfg),
    mesh,
    partitioning.DEFAULT_RULES,
    LENGTHS,
    num_microbatches=num_microbatches,
  )
  state = trainer.init_state(seed=0)
  losses = []
  for batch in random_batches(steps, 8):
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  return trainer, state, np.array(losses)


def assert_close_trees(a, b, rtol=1e-5):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    scale = max(np.abs(x).max(), 1e-6)
    assert np.abs(x - y).max() / scale <= rtol, jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def single_device():
  return run((1, 1), tiny_config())


@pytest.mark.parametrize("mesh_shape", [(4, 2), (2, 4)])
def test_mesh_matches_single_device(single_device, mesh_shape):
  _, ref_state, ref_losses = single_device
  trainer, state, losses = run(mesh_shape, tiny_config())
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert_close_trees(jax.device_get(state.params), jax.device_get(ref_state.params))

  # Parameters are really split as the rules say: heads/mlp/vocab on `model`.
  params = state.params
  emb = params["token_embedder"]["embedding"]
  assert emb.sharding.spec == P("model", None)
  assert emb.addressable_shards[0].data.shape == (VOCAB // mesh_shape[1], 64)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = jax.tree_util.keystr(path)
    if "mlp" in name and "wi" in name:
      assert leaf.sharding.spec[-1] == "model", name
  # Optimizer statistics follow their parameters (factored rows/columns included).
  opt_specs = {
    jax.tree_util.keystr(p): l.sharding.spec
    for p, l in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
  }
  assert any(spec and "model" in tuple(spec) for spec in opt_specs.values())


def test_microbatches_match_full_batch(single_device):
  _, ref_state, ref_losses = single_device
  _, state, losses = run((1, 1), tiny_config(), num_microbatches=2)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert_close_trees(jax.device_get(state.params), jax.device_get(ref_state.params))


def test_step0_loss_near_log_vocab(single_device):
  # T5's init gives unit-variance logits (embedding N(0,1), unit-RMS decoder output scaled by
  # d_model**-0.5), so the expected step-0 cross-entropy is ln(V) + 1/2, not ln(V).
  _, _, losses = single_device
  assert abs(losses[0] - (np.log(VOCAB) + 0.5)) < 0.2


def test_scan_and_unrolled_layers_train_alike():
  # Adafactor runs per layer on stacked params, so scan changes nothing numerically: start both
  # layouts from the same weights and compare the losses and the updated weights.
  scanned_cfg, unrolled_cfg = tiny_config(scan_layers=True), tiny_config(scan_layers=False)
  runs = {}
  for cfg in (scanned_cfg, unrolled_cfg):
    mesh = partitioning.make_mesh(1, devices=jax.devices()[:1])
    trainer = Trainer(EncoderDecoderModel(cfg), mesh, partitioning.DEFAULT_RULES, LENGTHS)
    state = trainer.init_state(seed=0)
    if cfg is unrolled_cfg:  # the scanned run's initial weights, unstacked
      params = hf_mapping.from_hf_state_dict(runs["scanned_init"], cfg)
      params = jax.device_put(params, trainer.state_shardings.params)
      state = state.replace(params=params, opt_state=trainer.optimizer.init(params))
    else:
      runs["scanned_init"] = hf_mapping.to_hf_state_dict(jax.device_get(state.params), cfg)
    losses = []
    for batch in random_batches(2, 8):
      state, metrics = trainer.train_step(state, batch)
      losses.append(float(metrics["loss"]))
    runs[cfg.scan_layers] = (
      np.array(losses),
      hf_mapping.to_hf_state_dict(jax.device_get(state.params), cfg),
    )
  np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-5)
  for name, value in runs[True][1].items():
    np.testing.assert_allclose(value, runs[False][1][name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_gradients_split_over_data_train_alike_and_need_less_memory(single_device):
  # The default rules split the gradients and the microbatch accumulator over `data`
  # (`embed_grad -> data`) while the parameters stay replicated: the same training, and the
  # compiled step needs fewer temporary bytes than with replicated gradients.
  from t5x_lite import memory_fit

  _, ref_state, ref_losses = single_device
  _, state, losses = run((8, 1), tiny_config(), num_microbatches=2)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert_close_trees(jax.device_get(state.params), jax.device_get(ref_state.params))
  embedding = state.params["token_embedder"]["embedding"]
  assert embedding.addressable_shards[0].data.shape == embedding.shape  # replicated

  mesh = partitioning.make_mesh(1, devices=jax.devices()[:8])
  replicated_grads = tuple(
    (name, None) if name == "embed_grad" else (name, axis)
    for name, axis in partitioning.DEFAULT_RULES
  )
  temp = {}
  for label, rules in (("split", partitioning.DEFAULT_RULES), ("replicated", replicated_grads)):
    trainer = Trainer(EncoderDecoderModel(tiny_config()), mesh, rules, LENGTHS, num_microbatches=2)
    compiled, abstract_state, batch = memory_fit.compile_train_step(trainer, batch_size=16)
    temp[label] = memory_fit.footprint(compiled, abstract_state, batch).temp
  assert temp["split"] < temp["replicated"], temp
