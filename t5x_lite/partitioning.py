"""Device mesh and the logical -> mesh axis rules.

Modules name their parameter and activation axes logically ('embed', 'mlp', 'heads', ...); this
file alone decides how those names map onto the `data` and `model` axes of the mesh.
"""

from collections.abc import Sequence
import contextlib
from typing import Any

import flax.linen as nn
import gin
import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from t5x_lite.errors import UserError

# T5X-like defaults: data parallelism on `batch`; with a `model` axis of size > 1 the vocabulary,
# heads and MLP hidden units are split (Megatron style), `embed` stays replicated.
# `embed_grad` is the `embed` axis of the gradients and of their microbatch accumulator: split over
# `data`, each device reduces and keeps 1/data of every gradient (as ZeRO stage 2) while the
# parameters stay replicated: each microbatch's gradients are reduced into the accumulator's
# 1/data slice and the update is gathered back. For base on 8 TPU v4 devices the step's
# temporaries drop from 5.10 to 2.69 GB (BENCHMARKS.md, "Memory and planning"). Map it to None
# for replicated gradients.
DEFAULT_RULES = (
  ("batch", "data"),
  ("vocab", "model"),
  ("mlp", "model"),
  ("heads", "model"),
  ("joined_kv", "model"),
  ("kv", None),
  ("embed", None),
  ("embed_grad", "data"),
  ("length", None),
  ("relpos_buckets", None),
  ("layers", None),
)


@gin.configurable
def logical_axis_rules(rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> tuple:
  return tuple((name, axis) for name, axis in rules)


def make_mesh(num_partitions: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
  """A (data, model) mesh over all devices of all processes; `model` has `num_partitions`."""
  devices = list(devices) if devices is not None else jax.devices()
  if num_partitions < 1 or len(devices) % num_partitions:
    raise UserError(f"NUM_PARTITIONS={num_partitions} does not divide the {len(devices)} devices")
  shape = (len(devices) // num_partitions, num_partitions)
  # Auto axes: XLA's partitioner propagates shardings from the annotated params and batch.
  axis_types = (AxisType.Auto, AxisType.Auto)
  if devices == jax.devices():
    # Topology-aware device order on TPU/GPU; identical to a reshape on CPU.
    return jax.make_mesh(shape, ("data", "model"), axis_types=axis_types, devices=devices)
  return Mesh(np.asarray(devices).reshape(shape), ("data", "model"), axis_types=axis_types)


def check_batch_split(batch_size: int, mesh: Mesh, num_microbatches: int = 1) -> None:
  """The global batch splits evenly over the `data` axis, and each shard over the microbatches."""
  data = mesh.shape["data"]
  if batch_size % data:
    raise UserError(
      f"BATCH_SIZE={batch_size} is not divisible by the data-parallel size {data} "
      f"({mesh.size} devices / NUM_PARTITIONS={mesh.shape['model']})"
    )
  if batch_size % (data * num_microbatches):
    raise UserError(
      f"BATCH_SIZE={batch_size} is not divisible by num_microbatches="
      f"{num_microbatches} x data-parallel size {data}; lower "
      f"--gin.train.num_microbatches (runs/pretrain.gin sets 2 to halve activation "
      f"memory) or raise BATCH_SIZE"
    )


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence[tuple[str, Any]]):
  """Mesh and logical rules in scope, so activations' logical constraints take effect."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
    yield


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
  """Maps a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def gradient_specs(param_specs: Any) -> Any:
  """The gradients' logical specs: the parameters' with `embed` named `embed_grad`."""
  rename = lambda spec: P(*("embed_grad" if name == "embed" else name for name in spec))
  return jax.tree.map(rename, param_specs, is_leaf=lambda x: isinstance(x, P))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split over `data` on their leading axis and replicated over `model`."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _path_names(path) -> tuple:
  names = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        names.append(getattr(entry, attr))
        break
  return tuple(names)


def optimizer_state_specs(abstract_state: Any, abstract_params: Any, param_specs: Any) -> Any:
  """Logical PartitionSpecs for an optax state so that it is sharded like the parameters.

  `param_specs` holds the parameters' logical specs (axis names such as 'layers', 'embed').
  Full-shape statistics take their parameter's spec. Adafactor's factored row/column statistics
  drop one axis of the parameter: they take the parameter's spec with that axis removed.
  Anything else (counters, placeholders) is replicated.
  """
  flat_params = {
    _path_names(p): (leaf.shape, spec)
    for (p, leaf), spec in zip(
      jax.tree_util.tree_flatten_with_path(abstract_params)[0],
      jax.tree_util.tree_leaves(param_specs, is_leaf=lambda x: isinstance(x, P)),
    )
  }

  def spec_for(path, leaf):
    names = _path_names(path)
    shape = tuple(getattr(leaf, "shape", ()))
    # The parameter path is a suffix of the state path (state trees nest the param tree).
    for start in range(len(names)):
      hit = flat_params.get(names[start:])
      if hit is None:
        continue
      param_shape, spec = hit
      spec = tuple(spec) + (None,) * (len(param_shape) - len(tuple(spec)))
      if shape == param_shape:
        return P(*spec)
      if len(shape) == len(param_shape) - 1:
        # Layer-stacked parameters are optimised per layer (see optimizers.py): factor within a layer.
        offset = 1 if spec and spec[0] == "layers" else 0
        dropped = _dropped_axis(
          param_shape[offset:], shape[offset:], "v_row" in names, "v_col" in names
        )
        if dropped is not None:
          return P(*(s for i, s in enumerate(spec) if i != dropped + offset))
      return P()
    return P()

  return jax.tree_util.tree_map_with_path(spec_for, abstract_state)


def _dropped_axis(param_shape, shape, is_row, is_col) -> int | None:
  candidates = [
    i
    for i in range(len(param_shape))
    if tuple(np.delete(np.asarray(param_shape), i)) == tuple(shape)
  ]
  if len(candidates) <= 1:
    return candidates[0] if candidates else None
  # Ambiguous (e.g. square matrices): follow optax's Adafactor, which factors the two largest axes
  # (in np.argsort order) and drops the largest for row statistics, the second largest for columns.
  order = np.argsort(param_shape)
  d1, d0 = int(order[-2]), int(order[-1])
  if is_row:
    return d0
  if is_col:
    return d1
  return candidates[0]
