"""The device mesh, how state and batches are laid out on it, and host batches made global."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flexivit_jax import data
from flexivit_jax.errors import UserError

# ----------------------------------------------------------------------------
# Mesh and shardings.


def mesh_sizes(mesh_cfg: Mapping[str, int], num_devices: int) -> Dict[str, int]:
  """{'data': D, 'fsdp': F} of `config.mesh` on `num_devices` devices; -1 means 'the rest'."""
  sizes = {"data": mesh_cfg.get("data", -1), "fsdp": mesh_cfg.get("fsdp", 1)}
  known = int(np.prod([s for s in sizes.values() if s != -1]))
  for axis, size in sizes.items():
    if size == -1:
      sizes[axis] = num_devices // known
  if sizes["data"] * sizes["fsdp"] != num_devices:
    raise UserError(f"mesh {dict(mesh_cfg)} does not fit the {num_devices} devices; "
                     "its axis sizes must multiply to the device count (use -1 for one axis)")
  return sizes


def make_mesh(mesh_cfg: Mapping[str, int], devices=None) -> Mesh:
  """A ('data', 'fsdp') mesh over all devices; -1 means 'the rest'."""
  devices = jax.devices() if devices is None else devices
  sizes = mesh_sizes(mesh_cfg, len(devices))
  return Mesh(np.asarray(devices).reshape(sizes["data"], sizes["fsdp"]), ("data", "fsdp"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch dimension split over every device."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def fsdp_axis(shape: Tuple[int, ...], fsdp: int, mode: str) -> Optional[int]:
  """The axis an array of `shape` is split on over `fsdp` devices (None: replicated):
  the largest axis divisible by the fsdp size, in "fsdp" mode."""
  if mode == "fsdp" and fsdp > 1 and len(shape) > 0:
    for axis in sorted(range(len(shape)), key=lambda i: -shape[i]):
      if shape[axis] % fsdp == 0 and shape[axis] >= fsdp:
        return axis
  return None


def state_sharding(mesh: Mesh, shape: Tuple[int, ...], mode: str) -> NamedSharding:
  """Replicated, or (fsdp) split on the largest axis divisible by the fsdp size."""
  axis = fsdp_axis(shape, mesh.shape["fsdp"], mode)
  if axis is None:
    return NamedSharding(mesh, P())
  spec = [None] * len(shape)
  spec[axis] = "fsdp"
  return NamedSharding(mesh, P(*spec))


def shardings_of(abstract, mesh, mode):
  return jax.tree.map(lambda a: state_sharding(mesh, a.shape, mode), abstract)


def to_global(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict:
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def check_batch_size(batch_size: int, mesh: Mesh, what: str) -> None:
  if batch_size % mesh.size or batch_size % jax.process_count():
    raise UserError(f"{what}={batch_size} must be divisible by the {mesh.size} devices "
                     f"and {jax.process_count()} processes")


# ----------------------------------------------------------------------------
# Evaluation.


def pad_batch(local: Mapping[str, np.ndarray], multiple: int) -> Dict[str, np.ndarray]:
  """Appends all-zero examples (their `_mask` False) up to a multiple of `multiple`."""
  n = len(local[data.MASK_KEY])
  pad = -n % multiple
  if not pad:
    return dict(local)
  return {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
          for k, v in local.items()}
