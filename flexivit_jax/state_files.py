"""Where train-state checkpoints live in a workdir, and reading their params.

The one owner of the on-disk layout of orbax train-state checkpoints:
`<workdir>/checkpoints/step_<step:09d>/state/` (orbax OCDBT/tensorstore files).
`train_state` (floor 3) writes and restores whole train states through this
layout; `checkpoint.load_params` and `export` (floor 2 / 4) read only the
params, as numpy, without a mesh. Kept small and free of trainer imports so
both can use it with imports running one way.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Optional

import jax
import numpy as np

from flexivit_jax import paths
from flexivit_jax.errors import UserError

CONFIG_JSON = "config.json"  # The run's completed config, written by the trainer.
CHECKPOINT_SUBDIR = "checkpoints"
STEP_PREFIX = "step"
STEP_DIGITS = 9
ITEM = "state"  # The one item per step: {"params", "opt_state", "step"}.
CORRUPT_MARK = ".corrupt-"  # `<step dir>.corrupt-<timestamp>`: set aside, never deleted.
_STEP_DIR_RE = re.compile(rf"^{STEP_PREFIX}_(\d{{{STEP_DIGITS},}})$")


def _ocp():
  import orbax.checkpoint as ocp  # Imported on use: loading orbax takes a second.
  return ocp


def name_format():
  """orbax's step-directory naming for this layout (`step_000000042`)."""
  return _ocp().path.step.standard_name_format(step_prefix=STEP_PREFIX,
                                               step_format_fixed_length=STEP_DIGITS)


def checkpoint_dir(workdir: str) -> str:
  """`<workdir>/checkpoints`, absolute (`paths.normalize`): orbax takes no relative path."""
  return paths.normalize(workdir) + "/" + CHECKPOINT_SUBDIR


def step_dir_name(step: int) -> str:
  return f"{STEP_PREFIX}_{step:0{STEP_DIGITS}d}"


def step_path(workdir: str, step: int) -> str:
  return checkpoint_dir(workdir) + "/" + step_dir_name(step)


def item_path(workdir: str, step: int) -> str:
  return step_path(workdir, step) + "/" + ITEM


def step_of(name: str) -> Optional[int]:
  """The step of a step-directory name; None for temp, corrupt or other names."""
  m = _STEP_DIR_RE.match(name.rstrip("/"))
  return int(m.group(1)) if m else None


def complete_steps(workdir: str) -> List[int]:
  """Steps whose save finished (orbax's commit), oldest first; [] if none."""
  from etils import epath
  root = epath.Path(checkpoint_dir(workdir))
  if not root.exists():
    return []
  return sorted(m.step for m in name_format().find_all(root))


def has_checkpoints(workdir: str) -> bool:
  return bool(complete_steps(workdir))


def read_params(workdir: str, step: Optional[int] = None) -> Dict:
  """The params of `step` (default: the newest complete one) as numpy arrays.

  Reads only the params subtree, whatever mesh wrote it; no devices needed.
  """
  return read_state(workdir, step, only="params")["params"]


def read_state(workdir: str, step: Optional[int] = None, only: Optional[str] = None) -> Dict:
  """The train state of `step` (or only its top-level key `only`) as numpy arrays.

  Optimizer states come back as plain dicts/lists (orbax's stored structure).
  """
  steps = complete_steps(workdir)
  if not steps:
    raise UserError(f"workdir {workdir!r} holds no complete train-state checkpoint "
                    f"under {CHECKPOINT_SUBDIR}/; pass a workdir with a saved checkpoint")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise UserError(f"workdir {workdir!r} has no checkpoint at step {step}; "
                    f"it has steps {steps}")
  ocp = _ocp()
  path = item_path(workdir, step)
  ckptr = ocp.PyTreeCheckpointer()
  try:
    tree = ckptr.metadata(path).item_metadata.tree
    tree = {only: tree[only]} if only else tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    out = ckptr.restore(path, args=ocp.args.PyTreeRestore(
        item=tree, restore_args=args, partial_restore=bool(only)))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"checkpoint {path!r} is truncated or unreadable "
                    f"({type(e).__name__}: {str(e)[:200]})") from e
  return jax.tree.map(np.asarray, out)


def is_train_workdir(path: str) -> bool:
  """True when `path` has an orbax `checkpoints/` directory (local or remote)."""
  if "://" in path:
    import tensorflow as tf  # gfile knows every scheme TF does (gs://, ram://, ...).
    return tf.io.gfile.isdir(checkpoint_dir(path))
  return os.path.isdir(checkpoint_dir(path))
