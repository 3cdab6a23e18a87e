"""Will a train step fit in device memory, and which remat policy / microbatch count makes it fit.

The train step is compiled ahead of time (nothing is allocated) and XLA's memory analysis gives
what one device needs. `train.memory_fit='auto'` uses this before the first step; `plan` uses
the same measurement for hardware that is not attached.

Candidates are tried cheapest first: first by the recomputation a remat policy adds (the order of
POLICIES_BY_COST), then by the number of microbatches (which adds no FLOPs and gives the same
update). The first candidate that fits is chosen.
"""

from collections.abc import Callable
import dataclasses
import math

import gin
import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite.errors import UserError

# Remat policies from least to most recomputation (see config.REMAT_POLICIES). Measured FLOP
# overheads are in BENCHMARKS.md ("Memory and planning").
POLICIES_BY_COST = ("none", "save_dots", "lean", "minimal", "save_attention_out", "full")
MODES = ("auto", "off")
GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Footprint:
  """Bytes one device needs for a train step; temp and total are None when the compiler itself
  refused the step for exceeding device memory."""

  params: int
  opt_state: int
  batch: int
  temp: int | None
  total: int | None
  # The compiler's own peak of live bytes (state included), where it reports one. For large
  # steps on TPU it is well under `total`: libtpu's temp size counts more than its buffer
  # assignment holds at once (BENCHMARKS.md, "Memory and planning"). `fits` uses `total`.
  peak: int | None = None

  def as_dict(self) -> dict:
    """The fixed keys of `plan`'s per_device_bytes."""
    return {k: v for k, v in dataclasses.asdict(self).items() if k != "peak"}

  def fits(self, limit_bytes: int) -> bool:
    return self.total is not None and self.total <= limit_bytes

  def state_exceeds(self, limit_bytes: int) -> bool:
    """The state and its float32 gradients (as large as the parameters) alone exceed the limit:
    no remat policy or microbatch count can help."""
    return 2 * self.params + self.opt_state > limit_bytes


def abstract_batch(trainer, batch_size: int, use_packing: bool = False) -> dict:
  """ShapeDtypeStructs of a global batch as the data pipeline delivers it (all int32)."""
  lengths = {"encoder": trainer.input_length, "decoder": trainer.target_length}
  names = {
    "encoder_input_tokens": "encoder",
    "decoder_input_tokens": "decoder",
    "decoder_target_tokens": "decoder",
    "decoder_loss_weights": "decoder",
  }
  if use_packing:
    for side in ("encoder", "decoder"):
      names[f"{side}_segment_ids"] = side
      names[f"{side}_positions"] = side
  return {
    name: jax.ShapeDtypeStruct(
      (batch_size, lengths[side]), jnp.int32, sharding=trainer.batch_sharding
    )
    for name, side in names.items()
  }


def per_device_bytes(tree) -> int:
  """Bytes of one device's shard of every leaf (ShapeDtypeStructs with shardings)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def compile_train_step(trainer, batch_size: int, use_packing: bool = False):
  """The trainer's own jitted train step, compiled for its mesh without running it."""

  state = trainer.abstract_state()
  batch = abstract_batch(trainer, batch_size, use_packing)
  compiled = trainer.compile_train_step(state, batch)  # kept by the trainer: its first step runs it
  return compiled, state, batch


def footprint(compiled, state, batch) -> Footprint:
  """Per-device bytes: state and batch shards, XLA's temporaries, and outputs not aliased."""
  analysis = compiled.memory_analysis()
  params, opt_state = per_device_bytes(state.params), per_device_bytes(state.opt_state)
  batch_bytes = per_device_bytes(batch)
  temp = int(analysis.temp_size_in_bytes)
  # The state is donated, so its outputs alias its inputs; anything else is extra.
  extra_out = max(0, int(analysis.output_size_in_bytes) - int(analysis.alias_size_in_bytes))
  arguments = int(analysis.argument_size_in_bytes)
  total = max(arguments, params + opt_state + batch_bytes) + temp + extra_out
  peak = int(getattr(analysis, "peak_memory_in_bytes", 0) or 0)
  return Footprint(
    params=params, opt_state=opt_state, batch=batch_bytes, temp=temp, total=total, peak=peak or None
  )


def candidates(policy: str, num_microbatches: int, per_shard_batch: int) -> list[tuple[str, int]]:
  """(remat_policy, num_microbatches) at least as memory-lean as the configured pair, cheapest
  first: policies by recomputation, then microbatch counts (powers of two dividing the batch of
  one data shard)."""
  start = POLICIES_BY_COST.index(policy) if policy in POLICIES_BY_COST else 0
  counts = [
    n
    for n in (2**i for i in range(int(math.log2(max(per_shard_batch, 1))) + 1))
    if per_shard_batch % n == 0 and n >= num_microbatches
  ]
  return [(p, n) for p in POLICIES_BY_COST[start:] for n in counts]


def choose(
  candidate_list: list[tuple[str, int]],
  measure_one: Callable[[str, int], Footprint],
  limit_bytes: int,
) -> tuple[tuple[str, int], Footprint] | None:
  """The first candidate that fits under `limit_bytes`, with its footprint; None if none does.

  `measure_one(policy, microbatches)` compiles a candidate. The search stops early once the
  state and its gradients alone exceed the limit (every later candidate holds the same state).
  """
  for policy, count in candidate_list:
    found = measure_one(policy, count)
    if found.fits(limit_bytes):
      return (policy, count), found
    if found.state_exceeds(limit_bytes):
      return None
  return None


def measure(
  trainer, batch_size: int, use_packing: bool = False, limit_bytes: int | None = None
) -> Footprint:
  """The footprint of the trainer's step. temp and total are None (no fit) when the compiler
  reports out-of-memory, or, without compiling, when the state and its gradients alone exceed
  `limit_bytes` (a compiler that cannot fit a program first spends long trying); any other
  compile error is raised."""
  state = trainer.abstract_state()
  refused = Footprint(
    params=per_device_bytes(state.params),
    opt_state=per_device_bytes(state.opt_state),
    batch=per_device_bytes(abstract_batch(trainer, batch_size, use_packing)),
    temp=None,
    total=None,
  )
  if limit_bytes is not None and refused.state_exceeds(limit_bytes):
    return refused
  try:
    return footprint(*compile_train_step(trainer, batch_size, use_packing))
  except Exception as e:  # noqa: BLE001  (only the compiler's out-of-memory means "no fit")
    if not is_out_of_memory(e):
      raise
  return refused


@gin.configurable
def device_memory_limit(override_bytes: int | None = None) -> int | None:
  """Bytes one device may use: `override_bytes` if bound, else the allocator's limit (None on
  CPU, which has no device limit)."""
  if override_bytes is not None:
    return int(override_bytes)
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("bytes_limit")


def is_out_of_memory(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "out of memory" in text


def fit_trainer(
  trainer, mode: str, batch_size: int, use_packing: bool, console: Callable[[str], None]
):
  """Returns `trainer` if its step fits the device (or mode is 'off' and it fits), else a Trainer
  with the cheapest remat policy / microbatch count that fits; its choice is bound in gin so
  that config.gin records it."""
  if mode not in MODES:
    raise UserError(f"train.memory_fit must be one of {', '.join(MODES)}, got {mode!r}")
  limit = device_memory_limit()
  if limit is None:
    return trainer
  cfg = trainer.model.cfg
  cache = {}
  trainers = {}  # the candidates measured: the one chosen keeps its compiled step

  def measured(policy: str, count: int) -> Footprint:
    if (policy, count) not in cache:
      trainers[(policy, count)] = rebuild(trainer, policy, count)
      cache[(policy, count)] = measure(trainers[(policy, count)], batch_size, use_packing, limit)
    return cache[(policy, count)]

  configured = (cfg.remat_policy, trainer.num_microbatches)
  # The configured step is compiled whatever its state's size: the error names its bytes.
  trainers[configured] = trainer
  cache[configured] = measure(trainer, batch_size, use_packing)
  needed = cache[configured].total
  if needed is not None and needed <= limit:
    return trainer
  shown = "more than the compiler allows" if needed is None else f"{needed / GiB:.2f} GiB"
  if mode == "off":
    raise UserError(
      f"the train step needs {shown} per device but the limit is "
      f"{limit / GiB:.2f} GiB; set train.memory_fit='auto', or pick a remat policy "
      f"/ microbatch count with `python -m t5x_lite.plan --sweep`"
    )
  data_parallel = trainer.mesh.shape["data"]
  found = choose(candidates(*configured, batch_size // data_parallel), measured, limit)
  if found is None:
    raise UserError(
      f"no remat policy / microbatch count fits the train step in "
      f"{limit / GiB:.2f} GiB per device (configured: {shown}); use more devices "
      f"or NUM_PARTITIONS, or see `python -m t5x_lite.plan --sweep`"
    )
  (policy, count), chosen = found
  console(
    f"memory_fit: the configured step (remat_policy={configured[0]}, num_microbatches="
    f"{configured[1]}) needs {shown} per device, over the {limit / GiB:.2f} GiB limit; "
    f"training with remat_policy={policy}, num_microbatches={count} "
    f"({chosen.total / GiB:.2f} GiB)"
  )
  with gin.unlock_config():
    gin.bind_parameter("memory_fit_choice.remat_policy", policy)
    gin.bind_parameter("memory_fit_choice.num_microbatches", count)
  memory_fit_choice()
  return trainers[(policy, count)]


@gin.configurable
def memory_fit_choice(
  remat_policy: str | None = None, num_microbatches: int | None = None
) -> tuple:
  """Records memory_fit's choice in the operative gin config (config.gin); used by nothing else."""
  return remat_policy, num_microbatches


def rebuild(trainer, remat_policy: str, num_microbatches: int):
  """The same trainer with another remat policy and microbatch count (same state layout)."""
  from t5x_lite.models import EncoderDecoderModel
  from t5x_lite.trainer import Trainer

  if (remat_policy, num_microbatches) == (trainer.model.cfg.remat_policy, trainer.num_microbatches):
    return trainer
  cfg = dataclasses.replace(trainer.model.cfg, remat_policy=remat_policy)
  lengths = {"inputs": trainer.input_length, "targets": trainer.target_length}
  return Trainer(
    EncoderDecoderModel(cfg),
    trainer.mesh,
    trainer.rules,
    lengths,
    num_microbatches=num_microbatches,
    loss_config=trainer.loss_config,
  )
