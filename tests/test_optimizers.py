"""The learning rate an optimizer reports is the one its updates apply, whatever schedule is bound."""

import gin
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from t5x_lite import gin_utils, optimizers
from t5x_lite.errors import UserError

# One flat parameter and one stacked over 3 layers (per-layer Adafactor): both small enough that
# Adafactor keeps full second moments.
SPECS = {"w": P(None), "stacked": P("layers", None)}
PARAMS = {"w": jnp.zeros((4,)), "stacked": jnp.zeros((3, 4))}
# Without clipping and parameter scaling, and with a constant gradient, Adafactor's update is
# exactly -learning_rate: its second moment is the squared gradient from the first step on.
PLAIN_ADAFACTOR = [
  "optimizers.adafactor.clipping_threshold = None",
  "optimizers.adafactor.multiply_by_parameter_scale = False",
]


def applied_rates(bindings, steps=4):
  with gin_utils.fresh_config():
    gin.parse_config(PLAIN_ADAFACTOR + bindings)
    tx = optimizers.make_optimizer(SPECS)
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  state = tx.init(PARAMS)
  applied = []
  for _ in range(steps):
    updates, state = tx.update(grads, state, PARAMS)
    leaves = np.concatenate([np.ravel(u) for u in jax.tree.leaves(updates)])
    assert np.allclose(leaves, leaves[0], rtol=1e-5)  # the same rate for every parameter
    applied.append(-float(leaves[0]))
  return applied, [float(tx.learning_rate(k)) for k in range(steps)]


@pytest.mark.parametrize(
  "bindings",
  [
    [],  # the recipe's default: rsqrt_schedule
    [
      "optimizers.rsqrt_schedule.warmup_steps = 2",
      "optimizers.rsqrt_schedule.base_learning_rate = 0.5",
    ],
    ["optimizers.adafactor.learning_rate = 0.003"],  # a constant
  ],
  ids=["default", "rsqrt warmup 2", "constant"],
)
def test_reported_rate_is_the_applied_one(bindings):
  applied, reported = applied_rates(bindings)
  np.testing.assert_allclose(applied, reported, rtol=1e-5)


def test_bound_schedule_changes_the_reported_rate():
  _, default = applied_rates([])
  _, warm = applied_rates(["optimizers.rsqrt_schedule.warmup_steps = 2"])
  assert default[0] == pytest.approx(1 / np.sqrt(10_000)) and warm[3] == pytest.approx(
    1 / np.sqrt(3)
  )


def test_an_optimizer_that_does_not_say_its_rate_is_refused():
  import optax

  with pytest.raises(UserError, match="make_optimizer.optimizer must be an optimizer of"):
    optimizers.make_optimizer(SPECS, optimizer=optax.sgd(0.1))
