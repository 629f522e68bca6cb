"""Train-state checkpoints: orbax, sharded, asynchronous, atomic, resumable on any mesh.

The one owner of saving and restoring `{"params", "opt_state", "step"}` (the
layout on disk is `state_files`'). Teachers are never part of the state, and
the data position is the step, so nothing else needs saving.

- Sharded: every process writes only the shards it holds (orbax OCDBT); nothing
  is gathered to one host.
- Asynchronous: `save` returns once the arrays are copied off the devices;
  the files are written in the background while training continues.
- Atomic: orbax writes into a temp directory and commits it (rename, or a
  commit marker on gs://); an interrupted save leaves the previous step as the
  newest complete one.
- Any mesh: `restore` reads into the shardings of the *current* mesh, so a run
  saved on 8 devices with fsdp=2 resumes on 4 devices replicated or on 2
  processes.
- Corrupt: a newest checkpoint that cannot be read is renamed to
  `<dir>.corrupt-<timestamp>` (never deleted) with a warning, and the one before
  it is used; when none is usable that is one UserError.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from flexivit_jax import paths, state_files, tree
from flexivit_jax.errors import UserError

log = logging.getLogger("flexivit_jax")


def leaf_names(pytree) -> Dict[str, Any]:
  """'/'-joined path name -> leaf (dict keys, attribute names and indices alike)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(pytree)[0]:
    out[tree.path_name(path)] = leaf
  return out


def with_shardings(abstract, shardings):
  """Abstract arrays that carry the target shardings of the current mesh."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def _all_agree(ok: bool) -> bool:
  """True only if every process says True (one small collective, at restore only)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(int(ok)))))


class StateCheckpoints:
  """Saves and restores the train states of one workdir."""

  def __init__(self, workdir: str, keep: int, keep_every: Optional[int] = None,
               async_save: bool = True):
    if keep < 1:
      raise UserError(f"keep_ckpt={keep} must be >= 1 (how many recent checkpoints to keep)")
    if keep_every is not None and keep_every < 1:
      raise UserError(f"keep_ckpt_every={keep_every} must be >= 1 or None")
    self.workdir = paths.normalize(workdir)
    self.directory = state_files.checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every, step_name_format=state_files.name_format(),
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self):
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state) -> None:
    """Starts writing `state` as `step`; returns once it is off the devices."""
    self._manager.save(step, args=ocp.args.Composite(**{
        state_files.ITEM: ocp.args.StandardSave(state)}), force=True)

  def wait(self) -> None:
    """Blocks until every started save is committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def _check_matches(self, step: int, abstract) -> None:
    """A config mismatch (not corruption) is the user's error; nothing is set aside."""
    path = state_files.item_path(self.workdir, step)
    stored = ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree
    have = {k: tuple(v.shape) for k, v in leaf_names(stored).items() if v is not None}
    want = {k: tuple(v.shape) for k, v in leaf_names(abstract).items()}
    if have != want:
      diff = sorted(set(have.items()) ^ set(want.items()))
      raise UserError(f"checkpoint {path} does not match this config's train state "
                      f"({len(diff)} differing leaves, e.g. {diff[:3]}); use another "
                      "workdir or the config that wrote it")

  def _try_restore(self, step: int, target) -> Tuple[Optional[Any], Optional[Exception]]:
    try:
      self._check_matches(step, target)
      args = ocp.args.Composite(**{state_files.ITEM: ocp.args.StandardRestore(target)})
      return self._manager.restore(step, args=args)[state_files.ITEM], None
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # Any read failure = corrupt.
      return None, e

  def _set_aside(self, step: int, error: Exception) -> str:
    src = epath.Path(state_files.step_path(self.workdir, step))
    dst = src.parent / (src.name + state_files.CORRUPT_MARK + time.strftime("%Y%m%dT%H%M%S"))
    if jax.process_index() == 0:
      src.rename(dst)
    multihost_utils.sync_global_devices(f"set aside {step}")
    self._manager.reload()
    log.warning("checkpoint %s is unreadable (%s: %s); set it aside as %s and trying the "
                "previous one", src, type(error).__name__, str(error)[:200], dst.name)
    return str(dst)

  def restore(self, abstract, shardings) -> Optional[Tuple[Any, int]]:
    """(state, step) of the newest readable checkpoint, laid out for this mesh.

    None when the workdir has no checkpoint; unreadable ones are set aside.
    """
    target = with_shardings(abstract, shardings)
    set_aside = []
    for step in reversed(self.steps()):
      state, error = self._try_restore(step, target)
      if _all_agree(error is None):
        return state, step
      set_aside.append(self._set_aside(step, error or RuntimeError("another process failed")))
    if set_aside:
      raise UserError(f"no usable checkpoint in {self.directory}: every one was unreadable "
                      f"and was set aside ({', '.join(set_aside)}); restore one or start "
                      "a new workdir")
    return None
