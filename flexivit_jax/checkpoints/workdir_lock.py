"""One workdir, one run: the lock file that stops a second run from writing into a live one.

Two runs in one workdir would interleave their checkpoints, metrics and
config.json, and the newest checkpoint would belong to neither. So the trainer
holds `<workdir>/run.lock` (`hold`) before it writes anything:

- A second run refuses at once: `UserError("workdir W is in use by pid P on
  host H since T")`, which the CLIs print as one line with exit status 2.
- A lock whose process is gone (same host, pid dead, or the pid now belongs to
  a process started later) is stale: taken over with a warning. A SIGKILLed
  run leaves such a lock; normal exits, errors and preemption (SIGTERM) remove
  it.
- The processes of one multi-process run share the workdir: only process 0
  takes the lock and tells the others (one small collective) whether it got
  it, so all of them go on or all refuse.
- URLs (gs://...) are not locked: object stores have no atomic create.

The lock file is JSON: {"pid", "host", "since", "started"}; `started` is the
process start time from /proc (where there is one), so a pid reused by another
process is not mistaken for the run.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import time
from typing import Any, Dict, Iterator, Optional

from flexivit_jax import paths
from flexivit_jax.errors import UserError

LOCK_NAME = "run.lock"
log = logging.getLogger("flexivit_jax")


class WorkdirInUse(UserError):
  """Another live run holds the workdir."""


def lock_path(workdir: str) -> str:
  return os.path.join(paths.normalize(workdir), LOCK_NAME)


def _start_time(pid: int) -> Optional[str]:
  """The start time of `pid` in clock ticks since boot (Linux /proc), else None."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
  except OSError:
    return None
  fields = stat[stat.rfind(")") + 2:].split()  # After the command name, which may hold spaces.
  return fields[19] if len(fields) > 19 else None  # Field 22 of proc(5); state is field 3.


def _is_zombie(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
  except OSError:
    return False
  return stat[stat.rfind(")") + 2:][:1] == "Z"


def _alive(holder: Dict[str, Any]) -> bool:
  """Whether the process named by a lock on this host still runs."""
  pid = holder.get("pid")
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # Someone else's process: alive.
  if _is_zombie(pid):
    return False
  started = holder.get("started")
  return started is None or _start_time(pid) in (None, started)


def _read(path: str) -> Optional[Dict[str, Any]]:
  """The holder in a lock file; None when it is gone or not (yet) complete JSON."""
  try:
    with open(path) as f:
      holder = json.load(f)
  except (OSError, ValueError):
    return None
  return holder if isinstance(holder, dict) else None


def describe(workdir: str, holder: Optional[Dict[str, Any]]) -> str:
  if not holder:
    return f"workdir {workdir} is in use by another run (see {lock_path(workdir)})"
  return (f"workdir {workdir} is in use by pid {holder.get('pid')} on host "
          f"{holder.get('host')} since {holder.get('since')}")


def _create(path: str) -> bool:
  """Writes a lock naming this process; False if one exists."""
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  pid = os.getpid()
  holder = {"pid": pid, "host": socket.gethostname(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "started": _start_time(pid)}
  with os.fdopen(fd, "w") as f:
    json.dump(holder, f)
  return True


def acquire(workdir: str) -> None:
  """Takes the lock of `workdir` (a local directory that exists) or raises WorkdirInUse."""
  workdir = paths.normalize(workdir)
  path = lock_path(workdir)
  for _ in range(3):  # Retries only after removing a stale lock or a racing writer.
    if _create(path):
      return
    holder = _read(path)
    if holder is None:  # Being written right now, or removed: look again shortly.
      time.sleep(0.2)
      holder = _read(path)
      if holder is None:
        continue
    if holder.get("host") != socket.gethostname() or _alive(holder):
      raise WorkdirInUse(describe(workdir, holder))
    log.warning("taking over the stale lock of workdir %s (pid %s on host %s since %s is gone)",
                workdir, holder.get("pid"), holder.get("host"), holder.get("since"))
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)
  raise WorkdirInUse(describe(workdir, _read(path)))


def release(workdir: str) -> None:
  """Removes the lock if this process holds it (never another run's)."""
  path = lock_path(workdir)
  holder = _read(path)
  if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


def _all_processes_agree(ok: bool) -> bool:
  """Process 0's answer, on every process (one small collective when there are several)."""
  import jax
  if jax.process_count() == 1:
    return ok
  import numpy as np
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds the lock of `workdir` (created if missing) for the body; see the module doc."""
  workdir = paths.normalize(workdir)
  if paths.is_url(workdir):
    yield
    return
  import jax
  leader = jax.process_index() == 0
  refusal = None
  if leader:
    os.makedirs(workdir, exist_ok=True)
    try:
      acquire(workdir)
    except WorkdirInUse as e:
      refusal = e
  if not _all_processes_agree(refusal is None):
    raise refusal or WorkdirInUse(describe(workdir, _read(lock_path(workdir))))
  try:
    yield
  finally:
    if leader:
      release(workdir)
