"""Optimizer and learning-rate schedule of the T5 recipe, from optax (nothing home-made)."""

from collections.abc import Callable
from typing import Any, NamedTuple

import gin
import jax
import jax.numpy as jnp
import optax

from t5x_lite.errors import UserError


@gin.configurable
def rsqrt_schedule(base_learning_rate: float = 1.0, warmup_steps: int = 10_000) -> optax.Schedule:
  """T5's inverse-square-root schedule: base / sqrt(max(step, warmup_steps))."""

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    return base_learning_rate / jnp.sqrt(jnp.maximum(step, float(warmup_steps)))

  return schedule


class ScheduledOptimizer(NamedTuple):
  """An optax transformation and the learning-rate schedule it applies (update k uses
  `learning_rate(k)`), so what is logged is what the optimizer does, whatever is bound."""

  init: Callable
  update: Callable
  learning_rate: optax.Schedule


def _as_schedule(learning_rate: optax.Schedule | float) -> optax.Schedule:
  if callable(learning_rate):
    return learning_rate
  return lambda step: jnp.asarray(learning_rate, jnp.float32)


@gin.configurable
def constant_schedule(value: float = 1e-3) -> optax.Schedule:
  """A constant learning rate (T5's fine-tuning recipe: 1e-3)."""
  return optax.constant_schedule(value)


@gin.configurable
def learning_rate_schedule(schedule=rsqrt_schedule) -> optax.Schedule:
  """The run's schedule, used by Adafactor and for the logged learning rate. `schedule` is a
  factory: `@optimizers.rsqrt_schedule` (pretraining) or `@optimizers.constant_schedule`."""
  return schedule()


@gin.configurable
def adafactor(
  learning_rate: optax.Schedule | float | None = None,
  decay_rate: float = 0.8,
  clipping_threshold: float | None = 1.0,
  multiply_by_parameter_scale: bool = True,
  factored: bool = True,
  momentum: float | None = None,
  min_dim_size_to_factor: int = 128,
  weight_decay_rate: float | None = None,
) -> optax.GradientTransformation:
  """optax.adafactor with the T5 defaults (factored second moments, decay 0.8, clipping 1.0,
  parameter-scale multiplication, no momentum)."""
  schedule = _as_schedule(learning_rate_schedule() if learning_rate is None else learning_rate)
  tx = optax.adafactor(
    learning_rate=schedule,
    decay_rate=decay_rate,
    clipping_threshold=clipping_threshold,
    multiply_by_parameter_scale=multiply_by_parameter_scale,
    factored=factored,
    momentum=momentum,
    min_dim_size_to_factor=min_dim_size_to_factor,
    weight_decay_rate=weight_decay_rate,
  )
  return ScheduledOptimizer(tx.init, tx.update, schedule)


def per_layer(tx: optax.GradientTransformation, stacked: Any) -> optax.GradientTransformation:
  """Applies `tx` to each layer of layer-stacked parameters separately.

  With scan over layers a parameter holds all layers on axis 0. Adafactor's factoring, update
  clipping and parameter scale are per-tensor statistics, so without this a scanned model would
  train differently from an unscanned one. `stacked` is a tree of bools like the params.
  Stacks of different depth (encoder and decoder) are vmapped separately; every sub-state keeps
  the full parameter tree (None elsewhere) so its paths still name the parameters.
  """

  def depths(tree):
    return sorted(
      {x.shape[0] for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(stacked)) if s}
    )

  def select(tree, depth):
    """The leaves stacked `depth` deep (depth None: the unstacked ones); None elsewhere."""
    return jax.tree.map(
      lambda x, s: x if (s and x.shape[0] == depth) or (not s and depth is None) else None,
      tree,
      stacked,
    )

  def merge(parts):
    return jax.tree.map(
      lambda *xs: next(x for x in xs if x is not None), *parts, is_leaf=lambda x: x is None
    )

  def init(params):
    groups = depths(params)
    return (
      tuple(jax.vmap(tx.init)(select(params, d)) for d in groups),
      tx.init(select(params, None)),
    )

  def update(grads, state, params=None):
    groups = depths(grads)
    updates, layered_states = [], []
    for d, sub_state in zip(groups, state[0]):
      p = select(params, d) if params is not None else None
      u, new_state = jax.vmap(tx.update)(select(grads, d), sub_state, p)
      updates.append(u)
      layered_states.append(new_state)
    p = select(params, None) if params is not None else None
    flat_u, flat_state = tx.update(select(grads, None), state[1], p)
    return merge([*updates, flat_u]), (tuple(layered_states), flat_state)

  return optax.GradientTransformation(init, update)


@gin.configurable
def make_optimizer(logical_specs: Any, optimizer=adafactor) -> ScheduledOptimizer:
  """The configured optimizer, applied per layer to parameters stacked by scan."""
  # Gin passes either the factory (`@adafactor`) or its result (`@adafactor()`).
  tx = optimizer() if not hasattr(optimizer, "update") else optimizer
  if not isinstance(tx, ScheduledOptimizer):
    raise UserError(
      f"make_optimizer.optimizer must be an optimizer of t5x_lite.optimizers (which "
      f"says the learning rate it applies), got {type(tx).__name__}"
    )
  stacked = jax.tree.map(
    lambda spec: bool(len(spec)) and spec[0] == "layers",
    logical_specs,
    is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
  )
  if not any(jax.tree.leaves(stacked)):
    return tx
  return ScheduledOptimizer(*per_layer(tx, stacked), learning_rate=tx.learning_rate)
