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


# Every command's parser (the analysis dispatcher only lists these analyses' names).
CLIS = ("train", "evaluate", "export", "compare", "checkpoints.__main__", "analysis.cka",
        "analysis.resize_methods", "analysis.zero_shot")


@pytest.mark.parametrize("name", CLIS)
def test_every_help_has_the_same_shape(name):
  """usage line, the module's summary as the description, the flags, one example command."""
  import importlib
  module = importlib.import_module(f"flexivit_jax.{name}")
  parser = module.build_parser()
  assert isinstance(parser, cli.ArgumentParser) and not parser.allow_abbrev
  command = f"python -m flexivit_jax.{name.removesuffix('.__main__')}"
  lines = parser.format_help().splitlines()
  assert lines[0].startswith(f"usage: {command} ")
  assert module.__doc__.splitlines()[0] in lines
  assert lines[-2:] == ["example:", f"  {cli.example_of(module.__doc__)}"]
  assert lines[-1].startswith(f"  {command} ")
  assert "--out" not in parser._option_string_actions or (  # pylint: disable=protected-access
      "directory" in parser._option_string_actions["--out"].help)


def test_unknown_or_misspelt_flag_is_one_line_naming_it(capsys):
  from flexivit_jax import evaluate
  with pytest.raises(SystemExit) as info:
    evaluate.main(["--chekpoint", "w"])  # Before the missing required --checkpoint.
  assert info.value.code == 2
  assert capsys.readouterr().err == (
      "error: unknown flag --chekpoint (did you mean '--checkpoint'?); see --help\n")


def test_train_help_runs_as_a_command():
  proc = subprocess.run([sys.executable, "-m", "flexivit_jax.train", "--help"],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.startswith("usage: python -m flexivit_jax.train ")
  assert "--config.KEY=VALUE" in proc.stdout and "--num_processes" in proc.stdout


def test_train_takes_config_overrides_beside_its_flags(monkeypatch):
  from flexivit_jax import train
  monkeypatch.setenv("FLEXIVIT_NUM_PROCESSES", "4")
  args = train.build_parser().parse_args(
      ["--config", "c.py", "--config.lr=0.1", "--workdir", "w", "--config.model.variant", "S",
       "--config.flag"])
  assert args.config == "c.py" and args.num_processes == 4 and args.progress is None
  assert args.config_overrides == [("lr", "0.1"), ("model.variant", "S"), ("flag", "True")]
