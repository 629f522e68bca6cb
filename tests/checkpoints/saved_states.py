"""Small orbax train states saved to a workdir, and ways to damage them (checkpoint tests)."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flexivit_jax.checkpoints import manager


def make_state(seed=0, width=8):
  rng = np.random.default_rng(seed)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(width, 4)), jnp.float32),
                      "bias": jnp.asarray(rng.normal(size=(4,)), jnp.bfloat16)},
            "scale": jnp.asarray(rng.normal(size=(width,)), jnp.float32)}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3, mu_dtype=jnp.bfloat16))
  opt_state = tx.init(params)
  opt_state = jax.tree.map(lambda x: x + 1 if x.dtype != jnp.int32 else x + 3, opt_state)
  return {"params": params, "opt_state": opt_state, "step": jnp.asarray(seed, jnp.int32)}


def replicated(tree):
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def save_steps(workdir, steps, keep=10, keep_every=None):
  ckpts = manager.StateCheckpoints(str(workdir), keep=keep, keep_every=keep_every)
  for step in steps:
    ckpts.save(step, make_state(step))
  ckpts.wait()
  return ckpts


def restore(workdir, seed=0):
  ckpts = manager.StateCheckpoints(str(workdir), keep=10)
  abstract = jax.eval_shape(lambda: make_state(seed))
  try:
    return ckpts.restore(abstract, replicated(abstract))
  finally:
    ckpts.close()


def truncate_data_files(step_dir: pathlib.Path):
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 64
           and "d" in p.relative_to(step_dir).parts]
  assert files, list(step_dir.rglob("*"))
  for p in files:
    with open(p, "r+b") as f:
      f.truncate(p.stat().st_size // 3)


def deny(*paths_denied):
  """A stand-in for files whose reads are refused (tests may run as root, where chmod is moot)."""
  def refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied", paths_denied[0])
  return refuse
