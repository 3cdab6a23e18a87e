"""Peak FLOP/s of the devices, the denominator of MFU.

Accelerators use the vendor's dense bf16 peak (a table below; override with the gin binding
`train.peak_flops_per_device`). CPUs have no published peak worth trusting, so the host's float32
matmul rate is measured (a 2048x2048 @ 2048x2048 matmul on one device using all the host's
cores, best of 10) and divided among the host's devices. A single measurement on a shared host
swings with the load of the moment (and MFU with it), so the best rate seen on this host is kept
with its date in `$T5X_LITE_CACHE/cpu_peak_flops.json` (default `~/.cache/t5x_lite`): each
process measures again and only ever raises it, so the figure settles at the idle host's rate and
runs become comparable. Should a run go faster than the figure, it is raised to what the run
achieved, so MFU never exceeds 100%. Delete the file to start over (e.g. on new hardware under the
same host name).
"""

import datetime
import json
import os
import platform
import time

import jax
import jax.numpy as jnp

# Dense bfloat16 peak FLOP/s per device (per chip for TPUs), from vendor datasheets.
_PEAK_BF16 = (
  ("h200", 989e12),
  ("h100", 989e12),
  ("a100", 312e12),
  ("l4", 121e12),
  ("tpu v6", 918e12),
  ("tpu v5p", 459e12),
  ("tpu v5 lite", 197e12),
  ("tpu v5e", 197e12),
  ("tpu v4", 275e12),
  ("tpu v3", 123e12),
)

_measured_cpu_peak: float | None = None


def measure_cpu_matmul_flops(size: int = 2048, repeats: int = 10) -> float:
  """Best-of-`repeats` float32 matmul FLOP/s of this host on one CPU device (once per process)."""
  global _measured_cpu_peak
  if _measured_cpu_peak is None:
    device = jax.local_devices(backend="cpu")[0]
    a = jax.device_put(jnp.ones((size, size), jnp.float32), device)
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
      start = time.perf_counter()
      matmul(a, a).block_until_ready()
      best = min(best, time.perf_counter() - start)
    _measured_cpu_peak = 2 * size**3 / best
  return _measured_cpu_peak


def cpu_peak_cache_path() -> str:
  root = os.environ.get("T5X_LITE_CACHE") or os.path.join(
    os.path.expanduser("~"), ".cache", "t5x_lite"
  )
  return os.path.join(root, "cpu_peak_flops.json")


def _host_key() -> str:
  """This host and what decides its matmul rate: the CPU model and the cores this process may use."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), model)
  except OSError:
    pass
  return f"{platform.node()} | {model} | {cpu_cores()} cores"


def cpu_cores() -> int:
  """The cores this process may run on (respects taskset and cgroup CPU sets)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def _read_cache() -> dict:
  try:
    with open(cpu_peak_cache_path(), encoding="utf-8") as f:
      cache = json.load(f)
    return cache if isinstance(cache, dict) else {}
  except (OSError, ValueError):
    return {}


def _write_cache_entry(flops_per_s: float, how: str) -> None:
  cache = _read_cache()
  cache[_host_key()] = {
    "flops_per_s": flops_per_s,
    "date": datetime.date.today().isoformat(),
    "how": how,
  }
  path = cpu_peak_cache_path()
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(cache, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  except OSError:  # a read-only home: the figure still holds for this process
    pass


def cpu_host_peak_flops() -> float:
  """The best float32 matmul FLOP/s seen on this host (this process's measurement included)."""
  entry = _read_cache().get(_host_key())
  cached = (
    float(entry["flops_per_s"])
    if isinstance(entry, dict) and isinstance(entry.get("flops_per_s"), (int, float))
    else 0.0
  )
  measured = measure_cpu_matmul_flops()
  if measured > cached:
    _write_cache_entry(measured, "2048^3 float32 matmul, best of 10")
  return max(measured, cached)


def peak_flops_per_device(device=None) -> float | None:
  """The peak FLOP/s of one device; None when unknown (MFU is then not reported)."""
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return cpu_host_peak_flops() / max(1, len(jax.local_devices(backend="cpu")))
  return peak_flops_of_kind(device.device_kind)


def peak_flops_of_kind(device_kind: str) -> float | None:
  """Datasheet bfloat16 peak FLOP/s of a device kind ('TPU v4', 'NVIDIA H100 80GB HBM3', ...)."""
  kind = device_kind.lower()
  for name, peak in _PEAK_BF16:
    if name in kind:
      return peak
  return None


def utilization(
  achieved_flops_per_s: float,
  peak_per_device: float | None,
  num_devices: int,
  cached_cpu_peak: bool = True,
) -> tuple[float | None, float | None]:
  """(MFU, the peak per device to use from now on), MFU in [0, 1].

  On CPU, a rate above the cached peak means the peak was measured under load: the cached
  figure is raised to the achieved one. A datasheet or user-given peak is only clipped against.
  """
  if not peak_per_device:
    return None, peak_per_device
  mfu = achieved_flops_per_s / (peak_per_device * num_devices)
  if mfu <= 1.0:
    return mfu, peak_per_device
  if cached_cpu_peak and jax.devices()[0].platform == "cpu":
    local = max(1, len(jax.local_devices(backend="cpu")))
    per_device = achieved_flops_per_s / num_devices
    _write_cache_entry(per_device * local, "raised to a training run's achieved rate")
    return 1.0, per_device
  return 1.0, peak_per_device
