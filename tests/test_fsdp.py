"""runs/fsdp.gin: parameters and optimizer state split over `data` too, same training as one device."""

import gin
import jax
from jax.sharding import PartitionSpec as P
import numpy as np
from test_trainer_sharding import LENGTHS, VOCAB, random_batches, tiny_config

from t5x_lite import gin_utils, partitioning
from t5x_lite.models import EncoderDecoderModel
from t5x_lite.trainer import Trainer


def fsdp_rules():
  gin.clear_config()
  try:
    gin_utils.parse_gin(["runs/fsdp.gin"], [])
    return partitioning.logical_axis_rules()
  finally:
    gin.clear_config()


def train(num_devices, num_partitions, rules, steps=3):
  mesh = partitioning.make_mesh(num_partitions, devices=jax.devices()[:num_devices])
  trainer = Trainer(EncoderDecoderModel(tiny_config()), mesh, rules, LENGTHS)
  state = trainer.init_state(seed=0)
  losses = []
  for batch in random_batches(steps, 8):
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  return state, np.array(losses)


def test_fsdp_trains_like_one_device():
  rules = fsdp_rules()
  assert ("embed", "data") in rules
  _, ref_losses = train(1, 1, partitioning.DEFAULT_RULES)
  # 4 x 2: FSDP over `data` combined with a model axis, on 8 CPU devices.
  state, losses = train(8, 2, rules)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
  emb = state.params["token_embedder"]["embedding"]  # [vocab, embed]
  assert emb.sharding.spec == P("model", "data")
  assert emb.addressable_shards[0].data.shape == (VOCAB // 2, 64 // 4)
  # A layer-stacked kernel is split over data on its embed axis, model on its mlp axis.
  wi = state.params["encoder"]["layers"]["mlp"]["wi"]["kernel"]  # [layers, embed, mlp]
  assert wi.sharding.spec == P(None, "data", "model")
  # Per device: 1/8 of every matrix (1/2 without FSDP); only norm scales stay whole.
  per_device = sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(state.params))
  total = sum(leaf.nbytes for leaf in jax.tree.leaves(state.params))
  assert per_device < total / 4
