"""Shared helpers of the benchmarks: timing, the matmul check, sized parameters."""
from __future__ import annotations

import os
import time
from typing import Callable

from flexivit_jax import xla_env

# The CLIs' CPU XLA settings, so figures are what a user gets; FLEXIVIT_KEEP_XLA_FLAGS=1
# measures XLA's own defaults instead.
xla_env.apply_cpu_defaults()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np


FLEXI_PATCHES = (48, 40, 30, 24, 20, 16, 15, 12, 10, 8)


def xla_flags() -> str:
  return os.environ.get("XLA_FLAGS", "") or "(none)"


def cpu_threads() -> int:
  return len(os.sched_getaffinity(0))


def timed(fn: Callable) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def matmul_gflops(n: int = 2048, repeats: int = 3) -> float:
  """f32 n x n matmul GFLOP/s in JAX, best of `repeats`: the machine state."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  best = min(timed(lambda: f(a)) for _ in range(repeats))
  return 2 * n**3 / best / 1e9


def numpy_matmul_gflops(n: int = 2048, repeats: int = 3) -> float:
  """The same in numpy (its BLAS): a peak that does not depend on XLA's flags."""
  a = np.ones((n, n), np.float32)
  a @ a
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    a @ a
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best / 1e9


def peak_gflops() -> float:
  """The best plain matmul here, JAX (with this process's XLA flags) or numpy: MFU's peak."""
  return max(matmul_gflops(), numpy_matmul_gflops())


def median_ratio(num: list, den: list) -> float:
  return float(np.median(num) / np.median(den))
