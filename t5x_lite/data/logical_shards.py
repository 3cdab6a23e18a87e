"""One global example order, whatever the number of processes: logical data shards.

The training data is split into `count` logical shards (gin `logical_shards.count`; by default
gcd(batch size, 64)). Logical shard j is one deterministic stream: its part of the data (whole
files when there are enough, else an equal part of the lines; streams.py), its own seed
(seed * count + j) and batch_size / count rows per step. The global batch of a step is the
batches of shards 0..count-1 stacked in that order, so it depends on the task or mixture, the
seed, the batch size and the count, never on the processes.

Process p of P owns the contiguous block of shards [p * count / P, (p + 1) * count / P): it reads
and tokenizes only those, and its rows are rows [p * B / P, (p + 1) * B / P) of the global batch,
which is where jax.make_array_from_process_local_data puts a process's rows
(`check_process_rows`). Any P that divides `count` is allowed; each shard's position is saved on
its own, so a checkpoint written by P processes resumes on any other allowed count.
"""

import dataclasses
import hashlib
import json
import math
import os

import gin

from t5x_lite.errors import UserError

# The default count's ceiling: up to 64 hosts can share the data (each reads count / hosts shards,
# all in one pipeline per process).
MAX_DEFAULT_COUNT = 64


@gin.configurable("logical_shards")
def logical_shards_config(count: int | None = None) -> int | None:
  """How many logical shards the data is read as; None: gcd(BATCH_SIZE, 64)."""
  return count


def divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def _allowed(count: int) -> str:
  return ", ".join(str(d) for d in divisors(count))


@dataclasses.dataclass(frozen=True)
class ShardPlan:
  """Which logical shards one process reads, and how many rows each gives per step."""

  count: int
  batch_size: int
  process_index: int = 0
  process_count: int = 1

  @property
  def rows_per_shard(self) -> int:
    return self.batch_size // self.count

  @property
  def shards(self) -> range:
    """This process's logical shards, in the order its rows stack."""
    per_process = self.count // self.process_count
    return range(self.process_index * per_process, (self.process_index + 1) * per_process)

  @property
  def rows(self) -> range:
    """This process's rows of the global batch."""
    return range(self.shards.start * self.rows_per_shard, self.shards.stop * self.rows_per_shard)

  def shard_seed(self, seed: int, shard: int) -> int:
    # One seed per (seed, shard), distinct for every shard of every seed at this count.
    return seed * self.count + shard


def make_plan(
  batch_size: int, process_index: int = 0, process_count: int = 1, count: int | None = None
) -> ShardPlan:
  """The plan for this process; one-line errors for a count the batch or processes cannot use."""
  count = logical_shards_config() if count is None else count
  if count is None:
    count = math.gcd(batch_size, MAX_DEFAULT_COUNT)
  if isinstance(count, bool) or not isinstance(count, int) or count < 1:
    raise UserError(f"logical_shards.count must be a positive integer, got {count!r}")
  if batch_size % count:
    raise UserError(
      f"BATCH_SIZE={batch_size} is not divisible by logical_shards.count={count}: "
      f"each logical data shard gives the same number of rows per step; use a "
      f"count that divides it ({_allowed(batch_size)})"
    )
  if process_count < 1 or not 0 <= process_index < process_count:
    raise UserError(f"process {process_index} is not in [0, {process_count})")
  if count % process_count:
    raise UserError(
      f"{process_count} processes cannot share the {count} logical data shards "
      f"(logical_shards.count): run on a process count that divides {count} "
      f"({_allowed(count)}), or set logical_shards.count to a multiple of "
      f"{process_count} that divides BATCH_SIZE={batch_size} (a new data order)"
    )
  return ShardPlan(count, batch_size, process_index, process_count)


def check_process_rows(plan: ShardPlan, batch_sharding, num_rows_axis: int = 0) -> None:
  """The rows this process builds are the rows its devices hold of the global batch.

  `batch_sharding` is the sharding jax.make_array_from_process_local_data assembles the batch
  with; a device layout that interleaves processes along `data` (or a `model` axis spanning
  processes, where every process holds the whole batch) cannot take per-process blocks.
  """
  import jax  # only here: the rest of the data pipeline does not need it

  shape = (plan.batch_size, 1)
  held = set()
  for device, index in batch_sharding.devices_indices_map(shape).items():
    if device.process_index == plan.process_index:
      held.update(range(*index[num_rows_axis].indices(plan.batch_size)))
  if held != set(plan.rows):
    holds = (
      f"rows [{min(held)}, {max(held) + 1})"
      if held and len(held) == max(held) + 1 - min(held)
      else f"{len(held)} scattered rows"
    )
    raise UserError(
      f"process {plan.process_index} of {plan.process_count} reads rows "
      f"[{plan.rows.start}, {plan.rows.stop}) of the global batch but its devices hold "
      f"{holds}: this device layout ({jax.device_count()} devices, mesh "
      f"{dict(batch_sharding.mesh.shape)}) needs each process's devices to hold one contiguous "
      f"block of the `data` axis; lower NUM_PARTITIONS to the devices of one process"
    )


class RowDigests:
  """Appends {"batch", "first_row", "sha256"} per batch to `path`: the rows' place in the global
  batch and a digest of each, so runs on different process counts can be compared row by row."""

  def __init__(self, path: str, first_row: int):
    import tensorflow as tf  # only here: the shard arithmetic above needs no TF

    tf.io.gfile.makedirs(os.path.dirname(path))
    self._path, self._first_row = path, first_row

  def record(self, batch_index: int, batch: dict) -> None:
    rows = len(next(iter(batch.values())))
    digests = [
      hashlib.sha256(b"".join(batch[k][i].tobytes() for k in sorted(batch))).hexdigest()[:16]
      for i in range(rows)
    ]
    with open(self._path, "a") as f:
      f.write(
        json.dumps({"batch": batch_index, "first_row": self._first_row, "sha256": digests}) + "\n"
      )
