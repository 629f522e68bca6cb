"""The layout of a workdir's train-state step directories (`step_dirs`): names, paths, retries."""
import pytest

from flexivit_jax.checkpoints import step_dirs
from flexivit_jax.errors import UserError


def test_step_directory_names():
  assert step_dirs.step_dir_name(5) == "step_000000005"
  assert [step_dirs.step_of(n) for n in ("step_000000005", "step_000000005.corrupt-1",
                                         "step_000000005.orbax-checkpoint-tmp-9")] == [
      5, None, None]
  assert step_dirs.item_path("/run", 5) == "/run/checkpoints/step_000000005/state"


def test_a_workdir_without_checkpoints_has_no_steps(tmp_path):
  assert not step_dirs.is_train_workdir(str(tmp_path))
  assert step_dirs.complete_steps(str(tmp_path)) == []


def test_only_remote_reads_are_retried():
  assert step_dirs.default_tries("gs://bucket/run") == len(step_dirs.RETRY_WAITS_S) + 1 == 3
  assert step_dirs.default_tries("/tmp/run") == 1


def test_retrying_waits_between_tries_and_never_retries_a_user_error():
  waits, calls = [], []
  def flaky():
    calls.append(1)
    if len(calls) < 3:
      raise OSError(104, "Connection reset by peer")
    return "read"
  assert step_dirs.retrying(flaky, "x", 3, sleep=waits.append) == "read"
  assert waits == list(step_dirs.RETRY_WAITS_S)
  def wrong():
    calls.append(1)
    raise UserError("bad input")
  calls.clear()
  with pytest.raises(UserError, match="bad input"):
    step_dirs.retrying(wrong, "x", 3, sleep=waits.append)
  assert len(calls) == 1
