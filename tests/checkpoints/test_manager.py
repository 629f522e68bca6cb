"""Orbax train states in-process (`manager.StateCheckpoints`): round trip, retention, damaged
ones set aside (only proven damage: unreadable ones are an error that renames nothing), restore
retries, an interrupted asynchronous save, the npz export of params."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import pytest
from conftest import REPO

from flexivit_jax.checkpoints import manager, sources, step_dirs, step_health
from flexivit_jax.errors import UserError

from .saved_states import (assert_trees_equal, deny, make_state, replicated,
                           restore, save_steps, truncate_data_files)


def test_round_trip_is_bit_identical_and_layout_is_one_owner(tmp_path):
  save_steps(tmp_path, [3, 5]).close()
  state, step = restore(tmp_path)
  assert step == 5
  assert_trees_equal(state, make_state(5))
  assert sorted(os.listdir(tmp_path / step_dirs.CHECKPOINT_SUBDIR)) == [
      step_dirs.step_dir_name(3), step_dirs.step_dir_name(5)]
  assert_trees_equal(sources.read_params(str(tmp_path), 3), make_state(3)["params"])
  assert restore(tmp_path / "empty") is None


def test_keep_last_n_and_every_k(tmp_path):
  save_steps(tmp_path, range(1, 11), keep=2, keep_every=4).close()
  assert step_dirs.complete_steps(str(tmp_path)) == [4, 8, 9, 10]


def test_damaged_latest_is_set_aside_with_its_reason_and_previous_used(tmp_path, caplog):
  save_steps(tmp_path, [2, 4]).close()
  root = tmp_path / step_dirs.CHECKPOINT_SUBDIR
  truncate_data_files(root / step_dirs.step_dir_name(4))
  before = {p.name: p.stat().st_size for p in (root / "step_000000004").rglob("*") if p.is_file()}
  state, step = restore(tmp_path)
  assert step == 2
  assert_trees_equal(state, make_state(2))
  aside = [n for n in os.listdir(root) if n.startswith("step_000000004" + step_health.CORRUPT_MARK)]
  assert len(aside) == 1, os.listdir(root)  # Renamed, not deleted: same files, same sizes.
  after = {p.name: p.stat().st_size for p in (root / aside[0]).rglob("*") if p.is_file()}
  reason = (root / aside[0] / step_health.REASON_FILE).read_text()
  assert after.pop(step_health.REASON_FILE) and after == before
  assert "truncated" in reason
  assert "is damaged" in caplog.text and "--restore " + aside[0] in caplog.text
  health = {h.step: h for h in step_health.list_steps(str(tmp_path))}
  assert (health[2].state, health[4].state) == (step_health.COMPLETE, step_health.SET_ASIDE)
  assert "truncated" in health[4].reason and health[4].name == aside[0]


def test_no_usable_checkpoint_is_one_user_error(tmp_path):
  save_steps(tmp_path, [2]).close()
  truncate_data_files(tmp_path / step_dirs.CHECKPOINT_SUBDIR / "step_000000002")
  with pytest.raises(UserError, match="no usable checkpoint.*damaged.*set aside.*--restore"):
    restore(tmp_path)


@pytest.mark.parametrize("cause", ["permission", "memory", "io"])
def test_unreadable_but_complete_checkpoint_is_an_error_that_renames_nothing(
    tmp_path, monkeypatch, cause):
  save_steps(tmp_path, [2, 4]).close()
  root = tmp_path / step_dirs.CHECKPOINT_SUBDIR
  step_dir = str(root / "step_000000004")
  if cause == "permission":  # Restore and inspection both refused.
    monkeypatch.setattr(manager.StateCheckpoints, "_read", deny(step_dir))
    monkeypatch.setattr(step_health.Storage, "read_bytes", deny(step_dir))
    expect = r"step_000000004 could not be read \(PermissionError.*permission denied reading " \
             r"_CHECKPOINT_METADATA.*check the permissions.*nothing was set aside"
  else:  # The files are fine; reading them fails for another reason.
    error = MemoryError("cannot allocate") if cause == "memory" else OSError(5, "I/O error")
    def fail(*args, **kwargs):
      raise error
    monkeypatch.setattr(manager.StateCheckpoints, "_read", fail)
    expect = (r"step_000000004 is complete on disk but could not be read \((MemoryError|OSError)"
              r".*nothing was set aside")
  with pytest.raises(UserError, match=expect):
    restore(tmp_path)
  assert sorted(os.listdir(root)) == ["step_000000002", "step_000000004"]
  monkeypatch.undo()  # Readable again: the same workdir resumes from its newest step.
  assert restore(tmp_path, seed=4)[1] == 4


def test_a_restore_that_fails_twice_still_resumes_the_newest_step(tmp_path, monkeypatch):
  save_steps(tmp_path, [2, 4]).close()
  # A restore that fails twice on the way (a storage hiccup) still resumes the newest step.
  monkeypatch.setattr(step_dirs, "RETRY_WAITS_S", (0.0, 0.0))
  read, calls = manager.StateCheckpoints._read, []
  def flaky_read(self, step, target):
    calls.append(step)
    if len(calls) <= 2:
      raise OSError(104, "Connection reset by peer")
    return read(self, step, target)
  monkeypatch.setattr(manager.StateCheckpoints, "_read", flaky_read)
  ckpts = manager.StateCheckpoints(str(tmp_path), keep=10, read_tries=3)
  abstract = jax.eval_shape(lambda: make_state(4))
  state, step = ckpts.restore(abstract, replicated(abstract))
  ckpts.close()
  assert step == 4 and calls == [4, 4, 4]
  assert_trees_equal(state, make_state(4))


def test_trainer_and_readers_agree_on_which_steps_exist(tmp_path):
  """One owner of the layout: the trainer, load_params/export and the list see the same steps."""
  save_steps(tmp_path, [1, 2, 3]).close()
  root, wd = tmp_path / step_dirs.CHECKPOINT_SUBDIR, str(tmp_path)
  step_health.set_aside(wd, 3, "test")
  shutil.copytree(root / "step_000000002", root / "step_000000004.orbax-checkpoint-tmp-17")
  assert step_dirs.complete_steps(wd) == [1, 2]
  assert [(h.step, h.state) for h in step_health.list_steps(wd)] == [
      (1, "complete"), (2, "complete"), (3, "set aside"), (4, "partial")]
  assert_trees_equal(sources.load_params(wd), make_state(2)["params"])
  ckpts = manager.StateCheckpoints(wd, keep=10)  # Opening it removes the partial save.
  try:
    assert ckpts.steps() == sorted(ckpts._manager.all_steps()) == [1, 2]
  finally:
    ckpts.close()
  for step in (3, 4):
    with pytest.raises(UserError, match=rf"no checkpoint at step {step}; it has steps \[1, 2\]"):
      sources.load_params(wd, step=step)


def test_other_config_is_a_user_error_that_renames_nothing(tmp_path):
  save_steps(tmp_path, [2]).close()
  ckpts = manager.StateCheckpoints(str(tmp_path), keep=10)
  abstract = jax.eval_shape(lambda: make_state(0, width=16))
  with pytest.raises(UserError, match="does not match this config"):
    ckpts.restore(abstract, replicated(abstract))
  ckpts.close()
  assert os.listdir(tmp_path / step_dirs.CHECKPOINT_SUBDIR) == ["step_000000002"]


_SLOW_SAVE = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    from orbax.checkpoint._src.path import atomicity
    from saved_states import make_state, save_steps
    from flexivit_jax.checkpoints import manager
    save_steps(sys.argv[1], [1]).close()
    finalize = atomicity.AtomicRenameTemporaryPath.finalize
    async def slow_finalize(self, *a, **k):  # The commit of step 2 never comes in time.
      await asyncio.sleep(600)
      return await finalize(self, *a, **k)
    atomicity.AtomicRenameTemporaryPath.finalize = slow_finalize
    ckpts = manager.StateCheckpoints(sys.argv[1], keep=10)
    ckpts.save(2, make_state(2))
    print("save returned", flush=True)  # Asynchronous: training would go on here.
    ckpts.wait()
""")


@pytest.mark.slow
def test_killed_async_save_leaves_the_previous_checkpoint_usable(tmp_path):
  code = _SLOW_SAVE.format(tests=str(REPO / "tests" / "checkpoints"))
  proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "save returned", proc.communicate()[1][-3000:]
  root = tmp_path / step_dirs.CHECKPOINT_SUBDIR
  for _ in range(600):  # Wait until step 2's files are being written, then kill.
    if any("tmp" in n for n in os.listdir(root)):
      break
    import time
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert any(n.startswith("step_000000002") and "tmp" in n for n in os.listdir(root))
  assert step_dirs.complete_steps(str(tmp_path)) == [1]
  state, step = restore(tmp_path)
  assert step == 1
  assert_trees_equal(state, make_state(1))
  assert not any("tmp" in n for n in os.listdir(root))  # Cleaned when reopened.


@pytest.mark.slow
def test_export_cli_round_trip(tmp_path):
  save_steps(tmp_path / "wd", [3, 6]).close()
  out = tmp_path / "p.npz"
  cmd = [sys.executable, "-m", "flexivit_jax.export", str(tmp_path / "wd"), str(out),
         "--step", "3"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert_trees_equal(sources.load_params(str(out)), make_state(3)["params"])
  assert_trees_equal(sources.load_params(str(tmp_path / "wd")), make_state(6)["params"])
  bad = subprocess.run(cmd[:-1] + ["7"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1].startswith("error: ") and "step 7" in bad.stderr
  assert "Traceback" not in bad.stderr
