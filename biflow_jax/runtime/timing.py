"""Timing primitives shared by `--mode=bench` and tools/device_bench: a chip's peak, XLA's
FLOP and memory analysis of a compiled program, and a median wall time.

Imports only jax and numpy, so a bare accelerator image can run the device benchmark.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import jax
import numpy as np


# Dense bf16 peak TFLOP/s per chip, by the start of `jax.Device.device_kind`.
PEAK_TFLOPS = {
    'TPU v4': 275.0, 'TPU v5 lite': 197.0, 'TPU v5e': 197.0, 'TPU v5p': 459.0, 'TPU v5': 459.0,
    'TPU v6 lite': 918.0, 'TPU v6e': 918.0,
    'NVIDIA A100': 312.0, 'NVIDIA H100': 989.0, 'NVIDIA H200': 989.0,
}


def peak_tflops(device_kind: str, override: float = 0.0) -> float | None:
  """The chip's peak (config.bench.peak_tflops wins); None when unknown (e.g. CPUs)."""
  if override > 0:
    return float(override)
  for prefix in sorted(PEAK_TFLOPS, key=len, reverse=True):
    if device_kind.startswith(prefix):
      return PEAK_TFLOPS[prefix]
  return None


def compiled_flops(jitted, *args, **kwargs) -> float | None:
  """FLOPs of one call from XLA's cost analysis of the compiled program."""
  return flops_of(jitted.lower(*args, **kwargs).compile())


def flops_of(compiled) -> float | None:
  """FLOPs of one call of a compiled program (XLA cost analysis); None where unsupported."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (backends without cost analysis)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and 'flops' in cost else None


def memory_of(compiled) -> dict | None:
  """XLA's memory analysis of a compiled program, per device, in bytes: arguments,
  outputs, temporaries, aliased (donated) bytes, generated code, and their live total
  (arguments + outputs + temporaries - aliased: what the program needs at once, the
  figure to hold against a chip's memory). None where the backend gives no analysis."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (backends without memory analysis)
    return None
  if stats is None:
    return None
  out = {name: int(getattr(stats, f'{name}_size_in_bytes'))
         for name in ('argument', 'output', 'temp', 'alias', 'generated_code')}
  out['total'] = out['argument'] + out['output'] + out['temp'] - out['alias']
  return out


def peak_memory_bytes() -> int | None:
  """Peak device memory in use (GPU/TPU); None where the backend does not report it."""
  stats = jax.devices()[0].memory_stats()
  return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


def time_fn(fn: Callable[[], Any], repeats: int = 5) -> float:
  """Median seconds of fn() after one warm-up (compile) call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))
