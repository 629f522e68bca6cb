"""FLOPs of a compiled computation, read from XLA's cost analysis.

Counting what XLA will run (not a formula) keeps the numbers honest for every
size, sharding and fusion; every FLOP count in the package and its benchmarks
goes through `gflops`.
"""
from __future__ import annotations

import math


def gflops(compiled, num_devices: int = 1) -> float:
  """GFLOPs of one call of `compiled` (a `jax.stages.Compiled` or `Lowered`).

  An SPMD executable's analysis counts one device's share, so `num_devices`
  scales it to the whole call. NaN when XLA reports no count (some backends).
  """
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per computation.
    cost = cost[0] if cost else {}
  flops = (cost or {}).get("flops")
  return math.nan if flops is None else float(flops) * num_devices / 1e9
