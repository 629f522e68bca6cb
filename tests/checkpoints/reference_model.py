"""Jitted applies and tree checks of the reference model, for the npz/sources/adapt tests."""
import functools

import jax
import numpy as np
from conftest import reference_model

from flexivit_jax.checkpoints import npz


@functools.lru_cache(maxsize=None)
def _apply_fn(overrides: tuple):
  """Jitted apply per model config: far faster than eager on 2 cores."""
  return jax.jit(reference_model(**dict(overrides)).apply, static_argnames="seqhw")


def logits(params, images, seqhw, **overrides):
  out, _ = _apply_fn(tuple(sorted(overrides.items())))({"params": params}, images,
                                                       seqhw=seqhw)
  return np.asarray(out)


def init_like(images, **overrides):
  """Stand-in for model.init: the model's param shapes (eval_shape, no compile), random values."""
  model = reference_model(**overrides)
  shapes = jax.eval_shape(functools.partial(model.init, seqhw=2), jax.random.PRNGKey(0),
                          images[:1, :64, :64])
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), shapes["params"])


def assert_trees_equal(a, b):
  fa, fb = npz.flatten(a), npz.flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
