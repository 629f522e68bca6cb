"""Where train-state checkpoints live in a workdir, and which steps exist.

The one owner of the on-disk layout of orbax train-state checkpoints:
`<workdir>/checkpoints/step_<step:09d>/state/` (orbax OCDBT/tensorstore files).
`manager` writes and restores whole train states through this layout;
`sources.load_params` and `export` read only the params, as numpy, without a
mesh; `step_health` judges and lists the step directories. Every reader
(trainer, evaluate, export, the analyses) agrees on which steps exist:
`complete_steps`, orbax's own list of committed steps.

Reads of remote storage are retried (`retrying`) before anything is judged: a
gs:// hiccup is no damage.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Callable, List, Optional, Sequence, TypeVar

from flexivit_jax import paths
from flexivit_jax.checkpoints import npz
from flexivit_jax.errors import UserError

CHECKPOINT_SUBDIR = "checkpoints"
STEP_PREFIX = "step"
STEP_DIGITS = 9
ITEM = "state"  # The one item per step: {"params", "opt_state", "step"}.
TMP_MARK = ".orbax-checkpoint-tmp"  # orbax's not-yet-committed step directories.
_STEP_DIR_RE = re.compile(rf"^{STEP_PREFIX}_(\d{{{STEP_DIGITS},}})$")

# How a remote read is retried before anything is judged: one wait per retry.
RETRY_WAITS_S: Sequence[float] = (1.0, 4.0)

log = logging.getLogger("flexivit_jax")
T = TypeVar("T")


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


def is_committed(step_dir: str) -> bool:
  """True once orbax committed the step directory (renamed it, or wrote its commit marker)."""
  return _ocp().path.step.is_path_finalized(step_dir)


def complete_steps(workdir: str) -> List[int]:
  """Steps whose save finished (orbax's commit), oldest first; [] if none."""
  from etils import epath
  root = epath.Path(checkpoint_dir(workdir))
  if not root.exists():
    return []
  return sorted(m.step for m in name_format().find_all(root))


def is_train_workdir(path: str) -> bool:
  """True when `path` has an orbax `checkpoints/` directory (local or remote)."""
  return npz.is_dir(checkpoint_dir(path))


# ----------------------------------------------------------------------------
# Retrying remote reads.


def default_tries(workdir: str) -> int:
  """Reads of remote storage get retried (a gs:// hiccup is no damage); local ones not."""
  return len(RETRY_WAITS_S) + 1 if paths.is_url(workdir) else 1


def retrying(read: Callable[[], T], what: str, tries: int,
             sleep: Callable[[float], None] = time.sleep) -> T:
  """read(), tried up to `tries` times with RETRY_WAITS_S between; each wait is logged.

  A UserError (the user's input is wrong) is never retried. After the last try
  the last exception propagates.
  """
  for attempt in range(1, tries + 1):
    try:
      return read()
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # Judged by the caller.
      if attempt == tries:
        raise
      wait = RETRY_WAITS_S[min(attempt - 1, len(RETRY_WAITS_S) - 1)]
      log.warning("reading %s failed (%s: %s); waiting %.1fs before try %d of %d",
                  what, type(e).__name__, str(e)[:200], wait, attempt + 1, tries)
      sleep(wait)
  raise AssertionError("unreachable")  # tries >= 1.
