"""FLOPs from XLA's cost analysis: the one reader every count goes through."""
import math

import jax
import jax.numpy as jnp
import pytest

from flexivit_jax.evaluators import flops


def test_gflops_of_a_matmul_is_2mnk_lowered_or_compiled():
  a = jax.ShapeDtypeStruct((64, 32), jnp.float32)
  b = jax.ShapeDtypeStruct((32, 16), jnp.float32)
  lowered = jax.jit(jnp.matmul).lower(a, b)
  want = 2 * 64 * 32 * 16 / 1e9
  assert flops.gflops(lowered.compile()) == pytest.approx(want, rel=0.01)
  assert flops.gflops(lowered) == pytest.approx(want, rel=0.01)
  # An SPMD executable counts one device's share: num_devices scales it to the call.
  assert flops.gflops(lowered.compile(), num_devices=4) == pytest.approx(4 * want, rel=0.01)


class _Cost:
  def __init__(self, cost):
    self._cost = cost

  def cost_analysis(self):
    return self._cost


def test_older_and_empty_cost_analyses():
  assert flops.gflops(_Cost([{"flops": 2e9}])) == 2.0  # One dict per computation.
  assert math.isnan(flops.gflops(_Cost([])))
  assert math.isnan(flops.gflops(_Cost(None)))
  assert math.isnan(flops.gflops(_Cost({"bytes accessed": 1.0})))
