"""Multi-process start-up through JAX's own runtime (jax.distributed), never home-made.

Sources, in order: explicit flags (`--coordinator_address`, `--num_processes`, `--process_id`),
the environment (T5X_LITE_COORDINATOR_ADDRESS / _NUM_PROCESSES / _PROCESS_ID, as launch/local.sh
sets them), then JAX's cluster auto-detection (Cloud TPU pods, SLURM) when `--multi_host` or a
cluster is detected. A single process needs none of it.

Under SLURM, jax gives each process only the GPU numbered SLURM_LOCALID (one process per GPU).
T5X_LITE_LOCAL_DEVICE_IDS (e.g. `0,1,2,3,4,5,6,7`) overrides that, for one process per node.
"""

import math
import os
import socket
import sys
import time

import jax

from t5x_lite.errors import UserError, first_line

_ENV = "T5X_LITE_"


def _env_int(name: str) -> int | None:
  value = os.environ.get(_ENV + name)
  return int(value) if value not in (None, "") else None


def _in_cluster() -> bool:
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  return "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"]


def _resolve(address: str) -> tuple[str, int]:
  host, _, port = address.rpartition(":")
  try:
    socket.getaddrinfo(host, int(port))
    return host, int(port)
  except (OSError, ValueError):
    raise UserError(f"coordinator address {address!r} cannot be resolved; use HOST:PORT") from None


def _wait_for_coordinator(address: str, timeout_s: float) -> float:
  """Waits until the coordinator accepts TCP connections; returns the seconds left.

  jax's client aborts the whole process (a C++ CHECK failure, no Python exception) when it cannot
  register in time, so an unreachable coordinator is detected here, where it can be named.
  """
  host, port = _resolve(address)
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=min(2.0, timeout_s)):
        return max(deadline - time.monotonic(), 0.0)
    except OSError as e:
      reason = e.strerror or type(e).__name__
      if time.monotonic() + 0.5 >= deadline:
        raise UserError(
          f"coordinator {address} is not reachable after {timeout_s:g}s ({reason}); "
          "is process 0 running and the address/port right?"
        ) from None
    time.sleep(0.5)


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  multi_host: bool = False,
  timeout_s: int = 120,
) -> None:
  """Initialises jax.distributed when this run has more than one process; bounded in time."""
  coordinator_address = coordinator_address or os.environ.get(_ENV + "COORDINATOR_ADDRESS")
  num_processes = num_processes if num_processes is not None else _env_int("NUM_PROCESSES")
  process_id = process_id if process_id is not None else _env_int("PROCESS_ID")

  explicit = coordinator_address is not None
  if not explicit and not multi_host and not _in_cluster():
    return
  if explicit:
    if num_processes is None or process_id is None:
      raise UserError("--coordinator_address needs --num_processes and --process_id")
    if not 0 <= process_id < num_processes:
      raise UserError(f"process_id {process_id} is outside [0, {num_processes})")
    if process_id == 0:
      _resolve(coordinator_address)  # process 0 serves the coordinator itself
    else:
      # The rest of the budget (at least a few seconds) bounds registration with all peers.
      timeout_s = max(int(math.ceil(_wait_for_coordinator(coordinator_address, timeout_s))), 5)
  local_ids = os.environ.get(_ENV + "LOCAL_DEVICE_IDS", "").strip()
  try:
    local_device_ids = [int(i) for i in local_ids.split(",")] if local_ids else None
  except ValueError:
    raise UserError(
      f"{_ENV}LOCAL_DEVICE_IDS={local_ids!r} is not a comma-separated list of device numbers"
    ) from None
  where = coordinator_address or "the auto-detected coordinator"
  # If registration still fails, jax aborts without a Python error: say first what it waits for.
  who = f"process {process_id} of {num_processes}" if explicit else "this process"
  print(f"{who}: joining the job at {where} (timeout {timeout_s}s)", file=sys.stderr, flush=True)
  # CPU processes exchange collectives through gloo (loopback or a real network).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      local_device_ids=local_device_ids,
      initialization_timeout=timeout_s,
    )
  except Exception as e:  # jax raises XlaRuntimeError/RuntimeError with long multi-line texts
    raise UserError(
      f"could not join the job at {where} within {timeout_s}s: {first_line(e)}"
    ) from None
  if num_processes is not None and jax.process_count() != num_processes:
    raise UserError(
      f"expected {num_processes} processes, the runtime reports {jax.process_count()}"
    )
