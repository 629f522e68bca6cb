"""The health of a workdir's step directories, judged from their files (`step_health`): each kind
of damage, retried reads, the listing the CLI prints, set aside and put back."""
import os

import pytest

from flexivit_jax.checkpoints import __main__ as checkpoints_cli
from flexivit_jax.checkpoints import step_dirs, step_health
from flexivit_jax.errors import UserError

from .saved_states import save_steps, truncate_data_files


class FlakyStorage(step_health.Storage):
  """Fails the first `failures` reads with a transient error, as a remote store may."""

  def __init__(self, failures):
    self.failures = failures
    self.calls = 0

  def read_bytes(self, path):
    self.calls += 1
    if self.calls <= self.failures:
      raise OSError(104, "Connection reset by peer")
    return super().read_bytes(path)


def test_reads_are_retried_before_anything_is_judged(tmp_path, caplog):
  save_steps(tmp_path, [2, 4]).close()
  waits = []
  health = step_health.inspect_step(str(tmp_path), 4, FlakyStorage(2), tries=3, sleep=waits.append)
  assert health.state == step_health.COMPLETE and waits == list(step_dirs.RETRY_WAITS_S)
  assert "waiting 1.0s before try 2 of 3" in caplog.text
  assert "waiting 4.0s before try 3 of 3" in caplog.text
  health = step_health.inspect_step(str(tmp_path), 4, FlakyStorage(3), tries=3, sleep=waits.append)
  assert health.state == step_health.UNREADABLE and "Connection reset" in health.reason
def test_health_of_each_kind_of_damage_and_put_back(tmp_path, capsys):
  save_steps(tmp_path, [1, 2, 3, 4, 5]).close()
  root = tmp_path / step_dirs.CHECKPOINT_SUBDIR
  wd = str(tmp_path)
  data, = (root / "step_000000002/state/d").iterdir()  # The index's root node (tiny values
  data.unlink()  # are stored inline in it) is gone.
  (root / "step_000000003/state/_METADATA").write_text('{"tree_metadata": {"(\'par')
  truncate_data_files(root / "step_000000004")
  os.rename(root / "step_000000005", root / "step_000000005.orbax-checkpoint-tmp-1796")
  health = {h.step: h for h in step_health.list_steps(wd)}
  assert [health[s].state for s in (1, 2, 3, 4, 5)] == [
      "complete", "damaged", "damaged", "damaged", "partial"], health
  assert "missing" in health[2].reason and data.name in health[2].reason
  assert "_METADATA is missing or unparsable" in health[3].reason
  assert "truncated" in health[4].reason
  assert step_dirs.complete_steps(wd) == [1, 2, 3, 4]
  name = step_health.set_aside(wd, 4, health[4].reason)
  assert step_dirs.complete_steps(wd) == [1, 2, 3]
  assert checkpoints_cli.main([wd]) == 0
  listed = capsys.readouterr().out
  assert "set aside" in listed and name in listed and "truncated" in listed, listed
  with pytest.raises(UserError, match="none is set aside.*" + name):
    step_health.put_back(wd, "7")
  (root / "step_000000004").mkdir()  # That step was written again: never overwritten.
  with pytest.raises(UserError, match="step_000000004 exists"):
    step_health.put_back(wd, "4")
  (root / "step_000000004").rmdir()
  assert step_health.put_back(wd, name) == "step_000000004"
  assert not (root / "step_000000004" / step_health.REASON_FILE).exists()
  assert step_dirs.complete_steps(wd) == [1, 2, 3, 4]
  assert step_health.inspect_step(wd, 4).state == "damaged"
