"""Train-state checkpoints: orbax, sharded, asynchronous, atomic, resumable on any mesh.

The one owner of saving and restoring `{"params", "opt_state", "step"}` (the
layout on disk is `step_dirs`'). Teachers are never part of the state, and
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
- Damaged, proven: when the newest checkpoint fails to restore, its files are
  inspected (`step_health.inspect_step`: orbax's commit and metadata, the OCDBT
  index, every data file at its recorded size). Only proven damage renames it
  `<dir>.corrupt-<timestamp>` (never deleted; the reason in `SET_ASIDE.txt`)
  and falls back to the one before it. A checkpoint that is complete on disk
  but cannot be read (permission, I/O, memory, network) is one UserError
  naming the cause, and nothing is renamed. Remote reads are retried first.
  `python -m flexivit_jax.checkpoints WORKDIR` lists every step's health and
  `--restore NAME` puts a set-aside one back.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from flexivit_jax import paths, tree
from flexivit_jax.checkpoints import step_dirs, step_health
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
               async_save: bool = True, read_tries: Optional[int] = None):
    """`read_tries`: how often a failed restore is tried before the files are inspected
    (default `step_dirs.default_tries`: retried on remote storage only)."""
    if keep < 1:
      raise UserError(f"keep_ckpt={keep} must be >= 1 (how many recent checkpoints to keep)")
    if keep_every is not None and keep_every < 1:
      raise UserError(f"keep_ckpt_every={keep_every} must be >= 1 or None")
    self.workdir = paths.normalize(workdir)
    self.directory = step_dirs.checkpoint_dir(workdir)
    self.read_tries = read_tries or step_dirs.default_tries(self.workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every, step_name_format=step_dirs.name_format(),
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self):
    """Committed steps, oldest first: the same list every reader of the workdir sees."""
    return step_dirs.complete_steps(self.workdir)

  def save(self, step: int, state) -> None:
    """Starts writing `state` as `step`; returns once it is off the devices."""
    self._manager.save(step, args=ocp.args.Composite(**{
        step_dirs.ITEM: ocp.args.StandardSave(state)}), force=True)

  def wait(self) -> None:
    """Blocks until every started save is committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def _check_matches(self, step: int, abstract) -> None:
    """A config mismatch (not corruption) is the user's error; nothing is set aside."""
    path = step_dirs.item_path(self.workdir, step)
    stored = ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree
    have = {k: tuple(v.shape) for k, v in leaf_names(stored).items() if v is not None}
    want = {k: tuple(v.shape) for k, v in leaf_names(abstract).items()}
    if have != want:
      scanned = lambda names: any("/encoderblock/" in k for k in names)  # noqa: E731
      if scanned(have) != scanned(want):
        raise UserError(
            f"checkpoint {path} was written by a model with scan={scanned(have)} and this "
            f"config has model.scan={scanned(want)}; a train state resumes only with the "
            "scan setting that wrote it: keep it, or export the params (python -m "
            "flexivit_jax.export) and start a new workdir from them with config.model_init")
      diff = sorted(set(have.items()) ^ set(want.items()))
      raise UserError(f"checkpoint {path} does not match this config's train state "
                      f"({len(diff)} differing leaves, e.g. {diff[:3]}); use another "
                      "workdir or the config that wrote it")

  def _read(self, step: int, target):
    self._check_matches(step, target)
    args = ocp.args.Composite(**{step_dirs.ITEM: ocp.args.StandardRestore(target)})
    return self._manager.restore(step, args=args)[step_dirs.ITEM]

  def _try_restore(self, step: int, target) -> Tuple[Optional[Any], Optional[Exception]]:
    """(state, None) or (None, the error of the last try); a UserError propagates."""
    try:
      return step_dirs.retrying(lambda: self._read(step, target),
                                f"checkpoint {step_dirs.step_path(self.workdir, step)}",
                                self.read_tries), None
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # Judged from the files next.
      return None, e

  def _set_aside(self, step: int, reason: str) -> str:
    name = step_health.set_aside(self.workdir, step, reason) if jax.process_index() == 0 else ""
    multihost_utils.sync_global_devices(f"set aside {step}")
    self._manager.reload()
    log.warning("checkpoint %s is damaged (%s); set it aside as %s and trying the previous "
                "one (put it back: python -m flexivit_jax.checkpoints %s --restore %s)",
                step_dirs.step_path(self.workdir, step), reason, name or "<process 0>",
                self.workdir, name or step)
    return name or step_dirs.step_dir_name(step)

  def restore(self, abstract, shardings) -> Optional[Tuple[Any, int]]:
    """(state, step) of the newest readable checkpoint, laid out for this mesh.

    None when the workdir has no checkpoint. A step that fails to read is set aside
    only when its files prove it damaged; otherwise that is one UserError.
    """
    target = with_shardings(abstract, shardings)
    set_aside = []
    for step in reversed(self.steps()):
      state, error = self._try_restore(step, target)
      if _all_agree(error is None):
        return state, step
      health = step_health.inspect_step(self.workdir, step)
      if not _all_agree(health.state == step_health.DAMAGED):
        raise step_health.unreadable_error(
            self.workdir, step, error or RuntimeError("another process could not read it"),
            health)
      set_aside.append(self._set_aside(step, health.reason))
    if set_aside:
      raise UserError(f"no usable checkpoint in {self.directory}: every one was damaged and "
                      f"was set aside ({', '.join(set_aside)}); put one back with "
                      f"python -m flexivit_jax.checkpoints {self.workdir} --restore NAME, "
                      "or start a new workdir")
    return None
