"""cli.main_wrapper: one line and an exit status per expected failure, tracebacks for bugs."""
import subprocess
import sys

import pytest

from conftest import DEMO_CONFIG
from flexivit_jax import cli, errors


def _exit(capsys, exc, *argv):
  def main(args):
    del args
    raise exc
  with pytest.raises(SystemExit) as info:
    cli.main_wrapper(main, ["prog", *argv])
  return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("exc,code,line", [
    (errors.UserError("unknown config key 'lr_'"), 2, "error: unknown config key 'lr_'"),
    (FileNotFoundError(2, "No such file or directory", "x.npz"), 2, "error: no such file: x.npz"),
    (PermissionError(13, "Permission denied", "wd/checkpoints"), 2,
     "error: permission denied: wd/checkpoints; check the permissions of that path"),
    (errors.TrainingDivergedError("diverged at step 3", step=3), 3, "error: diverged at step 3"),
    (errors.Preempted(7), 143, "preempted: saved checkpoint at step 7"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (errors.UserError("two\n  lines"), 2, "error: two; lines"),
])
def test_expected_failures_are_one_line(capsys, exc, code, line):
  status, err = _exit(capsys, exc)
  assert status == code
  assert err == line + "\n"


def test_verbose_adds_the_traceback_and_is_not_passed_on(capsys):
  seen = []

  def main(args):
    seen.append(args)
    raise errors.UserError("bad value")
  with pytest.raises(SystemExit) as info:
    cli.main_wrapper(main, ["prog", "--verbose", "--x=1"])
  err = capsys.readouterr().err
  assert info.value.code == 2 and seen == [["prog", "--x=1"]]
  assert "Traceback" in err and err.splitlines()[-1] == "error: bad value"


def test_a_bug_keeps_its_traceback():
  with pytest.raises(ZeroDivisionError):
    cli.main_wrapper(lambda args: 1 / 0, ["prog"])


def test_success_exits_with_mains_status():
  with pytest.raises(SystemExit) as info:
    cli.main_wrapper(lambda args: None, ["prog"])
  assert info.value.code is None


def test_config_validation_starts_no_jax_backend():
  """`complete` runs before `setup_jax` (device count, distributed init): it must not
  initialise a JAX backend, or `--num_cpu_devices` and multi-process runs break."""
  code = ("import flexivit_jax.training.config as c\n"
          "from jax._src import xla_bridge as xb\n"
          f"c.complete(c.load_config_file({DEMO_CONFIG!r} + ':runlocal'))\n"
          "assert not xb._backends, 'a JAX backend was initialised'\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
