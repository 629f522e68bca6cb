"""Traced steps kept on disk (jax.export), so a restart skips Python tracing.

JAX's persistent compilation cache skips XLA's compile on a restart, but not the
Python tracing and lowering of the Flax model and its gradient, which for a
ViT train step costs about as much as the compile itself. This cache stores
each step's lowered StableHLO (`jax.export`, flat arrays in and out, with the
output tree beside it) under a key that names everything the trace depends on:
the caller's fingerprint (config, package source), the argument shapes, dtypes
and shardings, the static value, and the jax/jaxlib versions. A hit
deserialises the module and lowers a call to it, which then hits the
persistent compilation cache too: the same HLO is compiled on the cold and the
warm path.

Files are written atomically (temporary name, then rename); an unreadable or
mismatched entry is traced again and overwritten, never trusted.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
from typing import Any, Callable, Optional, Sequence

import jax
import jaxlib
import numpy as np

log = logging.getLogger("flexivit_jax")

FORMAT = 1  # Bump when the entry layout changes.


def source_fingerprint(package_dir: str) -> str:
  """sha256 over every .py file below `package_dir` (names and bytes, sorted)."""
  h = hashlib.sha256()
  for root, dirs, files in os.walk(package_dir):
    dirs.sort()
    for name in sorted(f for f in files if f.endswith(".py")):
      path = os.path.join(root, name)
      h.update(os.path.relpath(path, package_dir).encode())
      with open(path, "rb") as f:
        h.update(f.read())
  return h.hexdigest()


def _describe(leaf) -> str:
  sharding = getattr(leaf, "sharding", None)
  if sharding is not None and hasattr(sharding, "mesh"):
    mesh = sharding.mesh
    where = f"{dict(mesh.shape)}{sharding.spec}{[d.platform for d in mesh.devices.flat][:1]}"
  else:
    where = repr(sharding)
  return f"{leaf.shape}{leaf.dtype}{where}"


def _entry_key(fingerprint: str, name: str, static: Any, args: Sequence[Any]) -> str:
  leaves, tree = jax.tree.flatten(args)
  parts = [str(FORMAT), fingerprint, name, repr(static), str(tree), jax.__version__,
           jaxlib.__version__, str(jax.process_count()), *map(_describe, leaves)]
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


class FlatCompiled:
  """A compiled flat-array executable behind the pytree call of the original step."""

  def __init__(self, compiled, out_tree):
    self._compiled = compiled
    self._out_tree = out_tree

  def __call__(self, *args):
    return self._out_tree.unflatten(self._compiled(*jax.tree.leaves(args)))

  def cost_analysis(self):
    return self._compiled.cost_analysis()

  def memory_analysis(self):
    return self._compiled.memory_analysis()


def _flat_shardings(out_shardings, out_tree) -> list:
  """`out_shardings` (a prefix of the output tree, as jax.jit takes it) per output leaf."""
  dummy = out_tree.unflatten([0] * out_tree.num_leaves)
  per_subtree = jax.tree.map(lambda s, sub: [s] * len(jax.tree.leaves(sub)), out_shardings,
                             dummy, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  return [s for group in jax.tree.leaves(per_subtree, is_leaf=lambda x: isinstance(x, list))
          for s in group]


class StepCache:
  """Exports and compiles steps, or loads them from `directory` when traced before.

  `fingerprint` must change whenever the function being traced could: callers
  hash their config and `source_fingerprint` of their package into it.
  """

  def __init__(self, directory: str, fingerprint: str):
    self.directory = directory
    self.fingerprint = fingerprint
    self.hits = self.misses = 0

  def compile(self, name: str, fn: Callable, static: Any, args: Sequence[Any], *,
              out_shardings, donate_argnums: Sequence[int] = ()) -> FlatCompiled:
    """`fn(*args, flexi=static)` compiled; `args` are ShapeDtypeStructs with shardings.

    `out_shardings` and `donate_argnums` mean what they mean to jax.jit.
    """
    path = os.path.join(self.directory, f"{name}-{_entry_key(self.fingerprint, name, static, args)}.bin")
    in_leaves, in_tree = jax.tree.flatten(args)
    entry = self._load(path, in_tree)
    if entry is None:
      entry = self._export(fn, static, args, out_shardings)
      self._store(path, entry)
      self.misses += 1
    else:
      self.hits += 1
    exported, out_tree = entry["exported"], entry["out_tree"]
    starts = np.cumsum([0] + [len(jax.tree.leaves(x)) for x in args])  # First leaf of each arg.
    donated = [i for a in donate_argnums for i in range(starts[a], starts[a + 1])]
    runner = jax.jit(exported.call, donate_argnums=tuple(donated),
                     out_shardings=_flat_shardings(out_shardings, out_tree))
    return FlatCompiled(runner.lower(*in_leaves).compile(), out_tree)

  @staticmethod
  def _export(fn, static, args, out_shardings) -> dict:
    in_tree = jax.tree.structure(args)
    jitted = jax.jit(fn, static_argnames=("flexi",), out_shardings=out_shardings)
    out_tree = jax.tree.structure(jax.eval_shape(lambda *a: jitted(*a, flexi=static), *args))

    def flat(*leaves):  # Re-uses the trace of eval_shape above (same jit, same avals).
      return jax.tree.leaves(jitted(*in_tree.unflatten(leaves), flexi=static))

    flat_jit = jax.jit(flat, out_shardings=_flat_shardings(out_shardings, out_tree))
    exported = jax.export.export(flat_jit)(*jax.tree.leaves(args))
    return {"exported": exported, "out_tree": out_tree, "in_tree": in_tree}

  def _load(self, path: str, in_tree) -> Optional[dict]:
    try:
      with open(path, "rb") as f:
        raw = pickle.load(f)
      entry = {"exported": jax.export.deserialize(bytearray(raw["exported"])),
               "out_tree": raw["out_tree"], "in_tree": raw["in_tree"]}
    except FileNotFoundError:
      return None
    except Exception as e:  # pylint: disable=broad-except
      log.warning("step cache entry %s is unreadable (%s); tracing again", path, e)
      return None
    if entry["in_tree"] != in_tree:
      log.warning("step cache entry %s was traced for other arguments; tracing again", path)
      return None
    return entry

  def _store(self, path: str, entry: dict) -> None:
    os.makedirs(self.directory, exist_ok=True)
    raw = {"exported": bytes(entry["exported"].serialize()), "out_tree": entry["out_tree"],
           "in_tree": entry["in_tree"]}
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
      with open(tmp, "wb") as f:
        pickle.dump(raw, f)
      os.replace(tmp, path)
    except OSError as e:  # A cache that cannot be written only costs time.
      log.warning("could not write step cache entry %s: %s", path, e)
      if os.path.exists(tmp):
        os.remove(tmp)
