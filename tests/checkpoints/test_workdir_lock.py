"""The workdir lock: a live holder refuses, a dead one is stale, the lock goes with its run.

The end-to-end case (two real training processes, one workdir) is in test_train_runs.py.
"""
import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from flexivit_jax.checkpoints import workdir_lock
from flexivit_jax.errors import UserError


def write_lock(workdir, pid, host=None, started=None):
  holder = {"pid": pid, "host": host or socket.gethostname(), "since": "2026-01-01T00:00:00+00:00",
            "started": started}
  (workdir / workdir_lock.LOCK_NAME).write_text(json.dumps(holder))


def dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()  # Reaped: the pid names no process (until reused).
  return proc.pid


def test_acquire_release_and_relative_workdir(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  os.mkdir("wd")
  workdir_lock.acquire("wd")
  holder = json.loads((tmp_path / "wd" / workdir_lock.LOCK_NAME).read_text())
  assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
  with pytest.raises(workdir_lock.WorkdirInUse):  # Also this process: one run per workdir.
    workdir_lock.acquire("./wd/")
  workdir_lock.release(str(tmp_path / "wd"))
  assert not (tmp_path / "wd" / workdir_lock.LOCK_NAME).exists()


def test_live_holder_refuses_with_one_line(tmp_path):
  write_lock(tmp_path, os.getppid())
  with pytest.raises(UserError) as e:
    workdir_lock.acquire(str(tmp_path))
  assert str(e.value) == (f"workdir {tmp_path} is in use by pid {os.getppid()} on host "
                          f"{socket.gethostname()} since 2026-01-01T00:00:00+00:00")


def test_other_host_is_never_taken_over(tmp_path):
  write_lock(tmp_path, dead_pid(), host="elsewhere")
  with pytest.raises(workdir_lock.WorkdirInUse, match="on host elsewhere"):
    workdir_lock.acquire(str(tmp_path))


def test_dead_pid_is_stale_and_taken_over_with_a_warning(tmp_path, caplog):
  pid = dead_pid()
  write_lock(tmp_path, pid)
  with caplog.at_level(logging.WARNING, logger="flexivit_jax"):
    workdir_lock.acquire(str(tmp_path))
  assert f"stale lock of workdir {tmp_path} (pid {pid}" in caplog.text
  assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
  workdir_lock.release(str(tmp_path))


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_reused_pid_is_stale(tmp_path):
  """A live pid whose start time differs from the lock's is another process: stale."""
  write_lock(tmp_path, os.getppid(), started="1")
  workdir_lock.acquire(str(tmp_path))
  workdir_lock.release(str(tmp_path))


def test_release_keeps_another_runs_lock(tmp_path):
  write_lock(tmp_path, os.getppid())
  workdir_lock.release(str(tmp_path))
  assert (tmp_path / workdir_lock.LOCK_NAME).exists()


def test_hold_releases_on_error_and_creates_the_workdir(tmp_path):
  workdir = tmp_path / "new" / "run"
  with pytest.raises(RuntimeError):
    with workdir_lock.hold(str(workdir)):
      assert (workdir / workdir_lock.LOCK_NAME).exists()
      raise RuntimeError("boom")
  assert workdir.is_dir() and not (workdir / workdir_lock.LOCK_NAME).exists()


def test_a_symlink_to_a_held_workdir_is_the_same_workdir(tmp_path):
  (tmp_path / "real").mkdir()
  os.symlink(tmp_path / "real", tmp_path / "link")
  workdir_lock.acquire(str(tmp_path / "real"))
  try:
    with pytest.raises(workdir_lock.WorkdirInUse, match=f"workdir {tmp_path}/link is in use"):
      workdir_lock.acquire(str(tmp_path / "link"))
  finally:
    workdir_lock.release(str(tmp_path / "link"))
  assert not (tmp_path / "real" / workdir_lock.LOCK_NAME).exists()
