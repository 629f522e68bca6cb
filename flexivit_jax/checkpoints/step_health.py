"""The health of a workdir's train-state checkpoints, judged from their own files.

A checkpoint is judged from its files, never from a failed restore. `damaged`
means proven: a file the commit promised is missing, shorter than the OCDBT
index says, or unparsable. A file that cannot be *read* (permission, I/O,
network) makes the step `unreadable`, which is never set aside. Damaged steps
are renamed `<step dir>.corrupt-<time>` (never deleted) with the reason in
`SET_ASIDE.txt` inside; `put_back` undoes it. `listing` is the table of every
step and its health that `python -m flexivit_jax.checkpoints WORKDIR` prints.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from typing import Any, Callable, Dict, List, Optional

from flexivit_jax import paths
from flexivit_jax.checkpoints import step_dirs
from flexivit_jax.errors import UserError

log = logging.getLogger("flexivit_jax")

CORRUPT_MARK = ".corrupt-"  # `<step dir>.corrupt-<timestamp>`: set aside, never deleted.
REASON_FILE = "SET_ASIDE.txt"  # Inside a set-aside directory: why, and when.
# A step directory of any kind: committed, orbax's temp, or set aside.
_ANY_STEP_RE = re.compile(rf"^{step_dirs.STEP_PREFIX}_(\d{{{step_dirs.STEP_DIGITS},}})")

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
      return step_dirs.retrying(lambda: getattr(self.storage, method)(*args), what, self.tries,
                                self.sleep)
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
  item = step_dirs.ITEM
  item_dir = step_dir + "/" + item
  metadata = read.json(item_dir + "/_METADATA", f"{item}/_METADATA")
  if not isinstance(metadata, dict) or "tree_metadata" not in metadata:
    raise _Damage(f"{item}/_METADATA holds no tree_metadata")
  keys, needed = _walk_index(read, item_dir)
  missing = [a for a in _expected_arrays(metadata["tree_metadata"]) if a + "/.zarray" not in keys]
  if missing:
    raise _Damage(f"{len(missing)} arrays of {item}/_METADATA are not in the OCDBT index, "
                  f"e.g. {missing[:3]}")
  for file, end in sorted(needed.items()):
    size = read(f"{item}/{file}", "size", item_dir + "/" + file)
    if size < end:
      raise _Damage(f"{item}/{file} is truncated: {size} bytes, its index needs {end}")


def inspect_step(workdir: str, step: int, storage: Optional[Storage] = None,
                 tries: Optional[int] = None,
                 sleep: Callable[[float], None] = time.sleep) -> StepHealth:
  """The health of `step`'s checkpoint, from its files: orbax's commit and metadata,
  the OCDBT index, and every data file it references at its recorded size.

  Cheap (reads the small index files, stats the data files). Remote reads are
  retried (`default_tries`) before anything is judged.
  """
  name, step_dir = step_dirs.step_dir_name(step), step_dirs.step_path(workdir, step)
  tries = step_dirs.default_tries(workdir) if tries is None else tries
  read = _Reader(storage or Storage(), tries, sleep)
  try:
    from etils import epath
    if not epath.Path(step_dir).exists():  # Gone (another run's retention?): not damage.
      return StepHealth(name, step, UNREADABLE, f"{step_dir} does not exist")
    if not step_dirs.is_committed(step_dir):
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
  root = epath.Path(step_dirs.checkpoint_dir(workdir))
  return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _set_aside_reason(workdir: str, name: str) -> str:
  from etils import epath
  path = epath.Path(step_dirs.checkpoint_dir(workdir)) / name / REASON_FILE
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
    if step_dirs.step_of(name) is not None:
      out.append(inspect_step(workdir, step))
    elif step_dirs.TMP_MARK in name:
      out.append(StepHealth(name, step, PARTIAL,
                            "the save never committed (stopped mid-save); ignored, and "
                            "removed when training resumes"))
    elif CORRUPT_MARK in name:
      out.append(StepHealth(name, step, SET_ASIDE, _set_aside_reason(workdir, name)))
  return sorted(out, key=lambda h: (h.step, h.name))


def listing(workdir: str) -> List[str]:
  """The lines of a table of every step directory and its health, newest last."""
  workdir = paths.normalize(workdir)
  if not step_dirs.is_train_workdir(workdir):
    raise UserError(f"{workdir!r} has no {step_dirs.CHECKPOINT_SUBDIR}/ directory; pass "
                    "a training workdir")
  rows = [(str(h.step), h.state, h.name, h.reason) for h in list_steps(workdir)]
  if not rows:
    return [f"no checkpoints in {step_dirs.checkpoint_dir(workdir)}"]
  head = ("step", "state", "directory", "reason")
  widths = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
  fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3]
  return [fmt(head).rstrip()] + [fmt(r).rstrip() for r in rows]


def set_aside(workdir: str, step: int, reason: str) -> str:
  """Renames `step`'s directory `<name>.corrupt-<time>` (never deleted); returns the new name.

  Call only for proven damage (`inspect_step(...).state == DAMAGED`). The reason
  is written inside, for `list_steps` and the person who puts it back.
  """
  from etils import epath
  src = epath.Path(step_dirs.step_path(workdir, step))
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
                    f"in {step_dirs.checkpoint_dir(workdir)}; set aside there: {names or 'none'}")
  src = epath.Path(step_dirs.checkpoint_dir(workdir)) / chosen[0]
  step = int(_ANY_STEP_RE.match(chosen[0]).group(1))
  dst = epath.Path(step_dirs.step_path(workdir, step))
  if dst.exists():
    raise UserError(f"cannot put back {chosen[0]}: {dst.name} exists; move it away first")
  src.rename(dst)
  if (dst / REASON_FILE).exists():
    (dst / REASON_FILE).unlink()
  return dst.name


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
  path = step_dirs.step_path(workdir, step)
  if health.state == DAMAGED:
    return UserError(f"checkpoint {path} is damaged ({health.reason}); read another step "
                     f"(list them: python -m flexivit_jax.checkpoints {workdir})")
  if health.state == COMPLETE:
    return UserError(f"checkpoint {path} is complete on disk but could not be read ({cause})"
                     f"{_cause_hint(error)}; nothing was set aside")
  return UserError(f"checkpoint {path} could not be read ({cause}; inspecting it: "
                   f"{health.reason}){_cause_hint(error)}; nothing was set aside")
