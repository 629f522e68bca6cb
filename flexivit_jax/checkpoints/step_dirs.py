"""Where train-state checkpoints live in a workdir, their health, and reading their params.

The one owner of the on-disk layout of orbax train-state checkpoints:
`<workdir>/checkpoints/step_<step:09d>/state/` (orbax OCDBT/tensorstore files).
`train_state` (floor 3) writes and restores whole train states through this
layout; `checkpoint.load_params` and `export` (floor 2 / 4) read only the
params, as numpy, without a mesh. Kept small and free of trainer imports so
both can use it with imports running one way. Every reader (trainer,
evaluate, export, the analyses) agrees on which steps exist: `complete_steps`,
orbax's own list of committed steps.

Health (`inspect_step`, `list_steps`): a checkpoint is judged from its own
files, never from a failed restore. `damaged` means proven: a file the commit
promised is missing, shorter than the OCDBT index says, or unparsable. A file
that cannot be *read* (permission, I/O, network) makes the step `unreadable`,
which is never set aside. Damaged steps are renamed `<step dir>.corrupt-<time>`
(never deleted) with the reason in `SET_ASIDE.txt` inside; `put_back` undoes it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

import jax
import numpy as np

from flexivit_jax import paths
from flexivit_jax.errors import UserError

CHECKPOINT_SUBDIR = "checkpoints"
STEP_PREFIX = "step"
STEP_DIGITS = 9
ITEM = "state"  # The one item per step: {"params", "opt_state", "step"}.
CORRUPT_MARK = ".corrupt-"  # `<step dir>.corrupt-<timestamp>`: set aside, never deleted.
TMP_MARK = ".orbax-checkpoint-tmp"  # orbax's not-yet-committed step directories.
REASON_FILE = "SET_ASIDE.txt"  # Inside a set-aside directory: why, and when.
_STEP_DIR_RE = re.compile(rf"^{STEP_PREFIX}_(\d{{{STEP_DIGITS},}})$")
_ANY_STEP_RE = re.compile(rf"^{STEP_PREFIX}_(\d{{{STEP_DIGITS},}})")

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
  path = item_path(workdir, step)
  try:
    out = retrying(lambda: _read_item(path, only), f"checkpoint {path}", default_tries(workdir))
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # Judged from the files below.
    raise unreadable_error(workdir, step, e) from e
  return jax.tree.map(np.asarray, out)


def _read_item(path: str, only: Optional[str]) -> Dict:
  ocp = _ocp()
  ckptr = ocp.PyTreeCheckpointer()
  tree = ckptr.metadata(path).item_metadata.tree
  tree = {only: tree[only]} if only else tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return ckptr.restore(path, args=ocp.args.PyTreeRestore(
      item=tree, restore_args=args, partial_restore=bool(only)))


def _cause_hint(error: BaseException) -> str:
  text = f"{type(error).__name__}: {error}"
  if isinstance(error, PermissionError) or "PERMISSION_DENIED" in text:
    return "; check the permissions of the checkpoint's files"
  if isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text:
    return "; the host or device ran out of memory"
  return ""


def unreadable_error(workdir: str, step: int, error: BaseException,
                     health: Optional[StepHealth] = None) -> UserError:
  """The one error for a checkpoint that failed to read, saying whether its files are damaged."""
  health = health or inspect_step(workdir, step)
  cause = f"{type(error).__name__}: {str(error)[:300]}"
  path = step_path(workdir, step)
  if health.state == DAMAGED:
    return UserError(f"checkpoint {path} is damaged ({health.reason}); read another step "
                     f"(list them: python -m flexivit_jax.checkpoints {workdir})")
  if health.state == COMPLETE:
    return UserError(f"checkpoint {path} is complete on disk but could not be read ({cause})"
                     f"{_cause_hint(error)}; nothing was set aside")
  return UserError(f"checkpoint {path} could not be read ({cause}; inspecting it: "
                   f"{health.reason}){_cause_hint(error)}; nothing was set aside")


def is_train_workdir(path: str) -> bool:
  """True when `path` has an orbax `checkpoints/` directory (local or remote)."""
  if "://" in path:
    import tensorflow as tf  # gfile knows every scheme TF does (gs://, ram://, ...).
    return tf.io.gfile.isdir(checkpoint_dir(path))
  return os.path.isdir(checkpoint_dir(path))


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


# ----------------------------------------------------------------------------
# Health of the checkpoints in a workdir.

COMPLETE = "complete"      # Committed; every file the commit promised is there at its size.
PARTIAL = "partial"        # A save that never committed (killed mid-save): ignored.
DAMAGED = "damaged"        # Committed, but a file is missing, truncated or unparsable.
SET_ASIDE = "set aside"    # Renamed `*.corrupt-<time>` earlier; `put_back` undoes it.
UNREADABLE = "unreadable"  # Could not be inspected (permission, I/O, network): not judged.


@dataclasses.dataclass(frozen=True)
class StepHealth:
  """What one directory under `checkpoints/` holds, judged from its own files."""
  name: str             # The directory's name under checkpoints/.
  step: Optional[int]
  state: str            # COMPLETE, PARTIAL, DAMAGED, SET_ASIDE or UNREADABLE.
  reason: str = ""


class Storage:
  """The reads `inspect_step` makes (epath and tensorstore); tests swap in a failing one."""

  def read_bytes(self, path: str) -> bytes:
    from etils import epath
    return epath.Path(path).read_bytes()

  def size(self, path: str) -> int:
    from etils import epath
    return int(epath.Path(path).stat().length)

  def ocdbt_node(self, item_dir: str, node: Optional[str] = None) -> Dict[str, Any]:
    """tensorstore's dump of the OCDBT manifest (node None) or of one b-tree node."""
    import tensorstore as ts
    url = item_dir if paths.is_url(item_dir) else "file://" + item_dir
    base = ts.KvStore.open(url.rstrip("/") + "/").result()
    return ts.ocdbt.dump(base, node).result()


class _Damage(Exception):
  """Proof that a committed checkpoint lost or broke a file."""


class _Unreadable(Exception):
  """A read failed for a reason other than damage."""


# tensorstore's status codes (the prefix of its ValueError messages) that prove damage.
_DAMAGE_CODES = ("NOT_FOUND", "OUT_OF_RANGE", "DATA_LOSS", "INVALID_ARGUMENT")


def _judged(error: Exception, what: str) -> Exception:
  """A failed read as proof of damage (file gone, short or garbled) or as unreadable."""
  text = f"{type(error).__name__}: {str(error)[:300]}"
  if isinstance(error, PermissionError) or "PERMISSION_DENIED" in str(error):
    return _Unreadable(f"permission denied reading {what} ({text})")
  if isinstance(error, (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError)):
    return _Damage(f"{what} is missing or unparsable ({text})")
  if isinstance(error, ValueError) and str(error).startswith(_DAMAGE_CODES):
    return _Damage(f"{what} is missing or truncated ({text})")
  return _Unreadable(f"could not read {what} ({text})")


class _Reader:
  """Storage reads with retries, failures turned into _Damage or _Unreadable."""

  def __init__(self, storage: Storage, tries: int, sleep: Callable[[float], None]):
    self.storage, self.tries, self.sleep = storage, tries, sleep

  def __call__(self, what: str, method: str, *args):
    try:
      return retrying(lambda: getattr(self.storage, method)(*args), what, self.tries, self.sleep)
    except Exception as e:  # pylint: disable=broad-except  # Judged here.
      raise _judged(e, what) from e

  def json(self, path: str, name: str) -> Any:
    data = self(name, "read_bytes", path)
    try:
      return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise _judged(e, name) from e


def _node_ref(location: str):
  """`btreenode:<base>:<file>:<offset>:<length>` (or `value:...`) -> (base+file, end byte)."""
  body = location.split(":", 1)[1]
  base, file, offset, length = body.rsplit(":", 3)
  return base + file, int(offset) + int(length)


def _walk_index(read: _Reader, item_dir: str):
  """(keys, {data file: bytes needed}) of the OCDBT index of an orbax item directory."""
  manifest = read("manifest.ocdbt", "ocdbt_node", item_dir, None)
  versions = manifest.get("versions") or []
  if not versions:
    raise _Damage("manifest.ocdbt lists no committed version")
  keys, needed = set(), {}
  pending = [versions[-1]["root"]["location"]]
  while pending:
    location = pending.pop()
    file, end = _node_ref(location)
    needed[file] = max(needed.get(file, 0), end)
    for entry in read(f"index node {file}", "ocdbt_node", item_dir, location)["entries"]:
      if "key" in entry:
        keys.add(entry["key"].decode() if isinstance(entry["key"], bytes) else entry["key"])
      for value in entry.values():
        if isinstance(value, str) and value.startswith("btreenode:"):
          pending.append(value)
        elif isinstance(value, str) and value.startswith("value:"):
          file, end = _node_ref(value)
          needed[file] = max(needed.get(file, 0), end)
  return keys, needed


def _expected_arrays(tree_metadata: Dict[str, Any]) -> List[str]:
  """The OCDBT key prefix of every array orbax recorded in `_METADATA`."""
  out = []
  for entry in tree_metadata.values():
    value = entry.get("value_metadata", {})
    if value.get("skip_deserialize") or value.get("value_type") in (None, "None"):
      continue
    out.append(".".join(str(k["key"]) for k in entry["key_metadata"]))
  return out


def _check_step_files(read: _Reader, step_dir: str) -> None:
  """Raises _Damage (with the proof) or _Unreadable; returns when every file checks out."""
  read.json(step_dir + "/_CHECKPOINT_METADATA", "_CHECKPOINT_METADATA")
  item_dir = step_dir + "/" + ITEM
  metadata = read.json(item_dir + "/_METADATA", f"{ITEM}/_METADATA")
  if not isinstance(metadata, dict) or "tree_metadata" not in metadata:
    raise _Damage(f"{ITEM}/_METADATA holds no tree_metadata")
  keys, needed = _walk_index(read, item_dir)
  missing = [a for a in _expected_arrays(metadata["tree_metadata"]) if a + "/.zarray" not in keys]
  if missing:
    raise _Damage(f"{len(missing)} arrays of {ITEM}/_METADATA are not in the OCDBT index, "
                  f"e.g. {missing[:3]}")
  for file, end in sorted(needed.items()):
    size = read(f"{ITEM}/{file}", "size", item_dir + "/" + file)
    if size < end:
      raise _Damage(f"{ITEM}/{file} is truncated: {size} bytes, its index needs {end}")


def inspect_step(workdir: str, step: int, storage: Optional[Storage] = None,
                 tries: Optional[int] = None,
                 sleep: Callable[[float], None] = time.sleep) -> StepHealth:
  """The health of `step`'s checkpoint, from its files: orbax's commit and metadata,
  the OCDBT index, and every data file it references at its recorded size.

  Cheap (reads the small index files, stats the data files). Remote reads are
  retried (`default_tries`) before anything is judged.
  """
  name, step_dir = step_dir_name(step), step_path(workdir, step)
  read = _Reader(storage or Storage(), default_tries(workdir) if tries is None else tries, sleep)
  try:
    from etils import epath
    if not epath.Path(step_dir).exists():  # Gone (another run's retention?): not damage.
      return StepHealth(name, step, UNREADABLE, f"{step_dir} does not exist")
    if not _ocp().path.step.is_path_finalized(step_dir):
      return StepHealth(name, step, PARTIAL, "no commit marker: the save never finished")
    _check_step_files(read, step_dir)
  except _Damage as e:
    return StepHealth(name, step, DAMAGED, str(e))
  except _Unreadable as e:
    return StepHealth(name, step, UNREADABLE, str(e))
  except Exception as e:  # pylint: disable=broad-except  # Inspecting must not fail.
    return StepHealth(name, step, UNREADABLE, f"{type(e).__name__}: {str(e)[:300]}")
  return StepHealth(name, step, COMPLETE, "")


def _entry_names(workdir: str) -> List[str]:
  from etils import epath
  root = epath.Path(checkpoint_dir(workdir))
  return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _set_aside_reason(workdir: str, name: str) -> str:
  from etils import epath
  path = epath.Path(checkpoint_dir(workdir)) / name / REASON_FILE
  try:
    return _one_line(path.read_text()) if path.exists() else "(no reason recorded)"
  except OSError as e:
    return f"(reason unreadable: {type(e).__name__})"


def _one_line(text: str) -> str:
  return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def list_steps(workdir: str) -> List[StepHealth]:
  """Every step directory under checkpoints/ (committed, partial or set aside) and its health."""
  out = []
  for name in _entry_names(workdir):
    m = _ANY_STEP_RE.match(name)
    if not m:
      continue
    step = int(m.group(1))
    if step_of(name) is not None:
      out.append(inspect_step(workdir, step))
    elif TMP_MARK in name:
      out.append(StepHealth(name, step, PARTIAL,
                            "the save never committed (stopped mid-save); ignored, and "
                            "removed when training resumes"))
    elif CORRUPT_MARK in name:
      out.append(StepHealth(name, step, SET_ASIDE, _set_aside_reason(workdir, name)))
  return sorted(out, key=lambda h: (h.step, h.name))


def set_aside(workdir: str, step: int, reason: str) -> str:
  """Renames `step`'s directory `<name>.corrupt-<time>` (never deleted); returns the new name.

  Call only for proven damage (`inspect_step(...).state == DAMAGED`). The reason
  is written inside, for `list_steps` and the person who puts it back.
  """
  from etils import epath
  src = epath.Path(step_path(workdir, step))
  stamp = time.strftime("%Y%m%dT%H%M%S")
  dst = src.parent / (src.name + CORRUPT_MARK + stamp)
  n = 1
  while dst.exists():
    n += 1
    dst = src.parent / (src.name + CORRUPT_MARK + f"{stamp}-{n}")
  src.rename(dst)
  try:
    (dst / REASON_FILE).write_text(f"set aside {stamp}: {reason}\n")
  except OSError as e:
    log.warning("could not record why %s was set aside (%s)", dst, e)
  return dst.name


def put_back(workdir: str, which: str) -> str:
  """Undoes `set_aside`: `which` is a set-aside directory name or its step; returns the name.

  Refuses when that step's directory exists again (a newer save of the same step).
  """
  from etils import epath
  names = [h.name for h in list_steps(workdir) if h.state == SET_ASIDE]
  if which.isdigit():
    chosen = [n for n in names if int(_ANY_STEP_RE.match(n).group(1)) == int(which)]
  else:
    chosen = [n for n in names if n == which.rstrip("/").rsplit("/", 1)[-1]]
  if len(chosen) != 1:
    problem = "several are" if chosen else "none is"
    raise UserError(f"cannot put back {which!r}: {problem} set aside under that name or step "
                    f"in {checkpoint_dir(workdir)}; set aside there: {names or 'none'}")
  src = epath.Path(checkpoint_dir(workdir)) / chosen[0]
  step = int(_ANY_STEP_RE.match(chosen[0]).group(1))
  dst = epath.Path(step_path(workdir, step))
  if dst.exists():
    raise UserError(f"cannot put back {chosen[0]}: {dst.name} exists; move it away first")
  src.rename(dst)
  if (dst / REASON_FILE).exists():
    (dst / REASON_FILE).unlink()
  return dst.name
