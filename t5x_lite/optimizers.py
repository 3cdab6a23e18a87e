"""Optimizer and learning-rate schedule of the T5 recipe, from optax (nothing home-made)."""

from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax


@gin.configurable
def rsqrt_schedule(base_learning_rate: float = 1.0, warmup_steps: int = 10_000) -> optax.Schedule:
  """T5's inverse-square-root schedule: base / sqrt(max(step, warmup_steps))."""

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    return base_learning_rate / jnp.sqrt(jnp.maximum(step, float(warmup_steps)))

  return schedule


@gin.configurable
def adafactor(learning_rate: optax.Schedule | float | None = None,
              decay_rate: float = 0.8,
              clipping_threshold: float | None = 1.0,
              multiply_by_parameter_scale: bool = True,
              factored: bool = True,
              momentum: float | None = None,
              min_dim_size_to_factor: int = 128,
              weight_decay_rate: float | None = None) -> optax.GradientTransformation:
  """optax.adafactor with the T5 defaults (factored second moments, decay 0.8, clipping 1.0,
  parameter-scale multiplication, no momentum)."""
  if learning_rate is None:
    learning_rate = rsqrt_schedule()
  return optax.adafactor(learning_rate=learning_rate, decay_rate=decay_rate,
                         clipping_threshold=clipping_threshold,
                         multiply_by_parameter_scale=multiply_by_parameter_scale,
                         factored=factored, momentum=momentum,
                         min_dim_size_to_factor=min_dim_size_to_factor,
                         weight_decay_rate=weight_decay_rate)


def per_layer(tx: optax.GradientTransformation, stacked: Any) -> optax.GradientTransformation:
  """Applies `tx` to each layer of layer-stacked parameters separately.

  With scan over layers a parameter holds all layers on axis 0. Adafactor's factoring, update
  clipping and parameter scale are per-tensor statistics, so without this a scanned model would
  train differently from an unscanned one. `stacked` is a tree of bools like the params.
  """

  def split(tree):
    a = jax.tree.map(lambda x, s: x if s else None, tree, stacked)
    b = jax.tree.map(lambda x, s: None if s else x, tree, stacked)
    return a, b

  def merge(a, b):
    return jax.tree.map(lambda s, x, y: x if s else y, stacked, a, b,
                        is_leaf=lambda x: x is None)

  def init(params):
    layered, flat = split(params)
    return jax.vmap(tx.init)(layered), tx.init(flat)

  def update(grads, state, params=None):
    layered_g, flat_g = split(grads)
    layered_p, flat_p = split(params) if params is not None else (None, None)
    layered_u, layered_s = jax.vmap(tx.update)(layered_g, state[0], layered_p)
    flat_u, flat_s = tx.update(flat_g, state[1], flat_p)
    return merge(layered_u, flat_u), (layered_s, flat_s)

  return optax.GradientTransformation(init, update)


@gin.configurable
def make_optimizer(logical_specs: Any, optimizer=adafactor) -> optax.GradientTransformation:
  """The configured optimizer, applied per layer to parameters stacked by scan."""
  # Gin passes either the factory (`@adafactor`) or its result (`@adafactor()`).
  tx = optimizer if isinstance(optimizer, optax.GradientTransformation) else optimizer()
  stacked = jax.tree.map(lambda spec: bool(len(spec)) and spec[0] == "layers", logical_specs,
                         is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  if not any(jax.tree.leaves(stacked)):
    return tx
  return per_layer(tx, stacked)
