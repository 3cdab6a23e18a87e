"""Peak FLOP/s of the devices, the denominator of MFU.

Accelerators use the vendor's dense bf16 peak (a table below; override with the gin binding
`train.peak_flops_per_device`). CPUs have no published peak worth trusting, so the float32
matmul rate is measured once per process: a 2048x2048 @ 2048x2048 matmul timed on one device
using all the host's cores, divided among the host's devices.
"""

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


def measure_cpu_matmul_flops(size: int = 2048, repeats: int = 5) -> float:
  """Best-of-`repeats` float32 matmul FLOP/s of this host on one CPU device."""
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


def peak_flops_per_device(device=None) -> float | None:
  """The peak FLOP/s of one device; None when unknown (MFU is then not reported)."""
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return measure_cpu_matmul_flops() / max(1, len(jax.local_devices(backend="cpu")))
  kind = device.device_kind.lower()
  for name, peak in _PEAK_BF16:
    if name in kind:
      return peak
  return None
