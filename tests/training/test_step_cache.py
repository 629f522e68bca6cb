"""The traced-step cache: a hit equals a fresh trace, and nothing wrong is ever trusted."""
import collections
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from flexivit_jax.training import step_cache

State = collections.namedtuple("State", ["w", "count"])  # A custom pytree node, as optax's.
TRACES = []


def step(state, batch, flexi):
  TRACES.append(flexi)
  scale = dict(flexi)["scale"]
  w = state.w - 0.1 * scale * jnp.tanh(batch["x"] @ state.w)
  return State(w, state.count + 1), {"loss": jnp.sum(w ** 2), "finite": jnp.isfinite(w).all()}


@pytest.fixture()
def args():
  repl = NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)), P())
  sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=repl)
  abstract = (State(sds((4, 4), jnp.float32), sds((), jnp.int32)), {"x": sds((4, 4), jnp.float32)})
  real = (State(jnp.eye(4) * 0.5, jnp.zeros((), jnp.int32)),
          {"x": jnp.arange(16, dtype=jnp.float32).reshape(4, 4) / 16})
  return abstract, real, (repl, repl)


def compile_with(directory, fingerprint, abstract, shardings, scale=2.0, donate=()):
  cache = step_cache.StepCache(str(directory), fingerprint)
  compiled = cache.compile("train", step, (("scale", scale),), abstract, out_shardings=shardings,
                           donate_argnums=donate)
  return cache, compiled


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_hit_skips_the_trace_and_equals_plain_jit(tmp_path, args):
  abstract, real, shardings = args
  expected = jax.jit(step, static_argnames="flexi")(*real, flexi=(("scale", 2.0),))
  TRACES.clear()
  cold, first = compile_with(tmp_path, "fp", abstract, shardings)
  assert (cold.hits, cold.misses) == (0, 1) and TRACES
  TRACES.clear()
  warm, second = compile_with(tmp_path, "fp", abstract, shardings)
  assert (warm.hits, warm.misses) == (1, 0)
  assert not TRACES  # The step function never ran in Python.
  for compiled in (first, second):
    assert_trees_equal(compiled(*real), expected)
  assert compiled.cost_analysis()["flops"] > 0


@pytest.mark.parametrize("change", ["fingerprint", "static", "dtype"])
def test_anything_the_trace_depends_on_makes_a_new_entry(tmp_path, args, change):
  abstract, real, shardings = args
  compile_with(tmp_path, "fp", abstract, shardings)
  fingerprint, scale = "fp", 2.0
  if change == "fingerprint":
    fingerprint = "other source"
  elif change == "static":
    scale = 3.0
  else:
    x = abstract[1]["x"]
    abstract = (abstract[0], {"x": jax.ShapeDtypeStruct(x.shape, jnp.bfloat16,
                                                        sharding=x.sharding)})
  cache, _ = compile_with(tmp_path, fingerprint, abstract, shardings, scale=scale)
  assert (cache.hits, cache.misses) == (0, 1)
  assert len(os.listdir(tmp_path)) == 2


def test_a_corrupt_entry_is_traced_again_and_replaced(tmp_path, args, caplog):
  abstract, real, shardings = args
  compile_with(tmp_path, "fp", abstract, shardings)
  (entry,) = os.listdir(tmp_path)
  with open(tmp_path / entry, "r+b") as f:
    f.truncate(100)
  with caplog.at_level(logging.WARNING, logger="flexivit_jax"):
    cache, compiled = compile_with(tmp_path, "fp", abstract, shardings)
  assert (cache.hits, cache.misses) == (0, 1)
  assert "unreadable" in caplog.text
  expected = jax.jit(step, static_argnames="flexi")(*real, flexi=(("scale", 2.0),))
  assert_trees_equal(compiled(*real), expected)
  again, _ = compile_with(tmp_path, "fp", abstract, shardings)
  assert again.hits == 1  # The rewritten entry is whole.
  assert os.listdir(tmp_path) == [entry]  # No temporary file left behind.


def test_donated_state_buffers_are_consumed(tmp_path, args):
  abstract, real, shardings = args
  for _ in range(2):  # Cold, then warm.
    _, compiled = compile_with(tmp_path, "fp", abstract, shardings, donate=(0,))
    state = jax.tree.map(jnp.copy, real[0])
    batch = real[1]
    compiled(state, batch)
    assert state.w.is_deleted() and not batch["x"].is_deleted()


def test_source_fingerprint_follows_file_contents(tmp_path):
  (tmp_path / "a.py").write_text("x = 1\n")
  (tmp_path / "notes.txt").write_text("ignored")
  before = step_cache.source_fingerprint(str(tmp_path))
  (tmp_path / "notes.txt").write_text("still ignored")
  assert step_cache.source_fingerprint(str(tmp_path)) == before
  (tmp_path / "a.py").write_text("x = 2\n")
  assert step_cache.source_fingerprint(str(tmp_path)) != before
